"""One reverse step of each process (the tails that end a sample: ``discdiff.samplers.tails``).

Notation (Concepts §5): K vocabulary size; a step goes from time t to s < t with signal levels
alpha_t <= alpha_s; alpha_ts = alpha_t / alpha_s; x_hat = softmax(logits) after top-k / nucleus
filtering, renormalised; i = z_t the current token.

The uniform step never builds the (B, L, K) posterior: it is a three-part mixture (stay at z_t,
draw from x_hat, draw uniformly), so it costs one pass over the logits (softmax, block masses,
the weight of z_t) plus O(sqrt(K)) work per token that draws from x_hat. The public functions
check their arguments; the step objects (``UniformStep``, ``MaskedStep``) call the unchecked
steps (``uniform_step``, ``masked_step``) with the levels of their grid. The Ψ mixture of the
uniform step is ``discdiff.numerics.uniform_mixture`` (also ``discdiff.samplers.psi``'s).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.kernels.dispatch import Backend, provide, use_triton
from discdiff.kernels.step import triton_step
from discdiff.numerics import uniform_mixture
from discdiff.samplers import levels as lv
from discdiff.samplers.categorical import (
    ChunkLaw,
    Source,
    block_size,
    check_filters,
    randint,
    row_chunks,
    softmax_weights,
    uniforms,
)
from discdiff.samplers.streams import RowStream, check_stream
from discdiff.typing import (
    check_count,
    check_tokens,
    checks_enabled,
    reject_if,
    typechecked,
)

__all__ = [
    "masked_ancestral_step",
    "masked_step",
    "uniform_ancestral_step",
    "uniform_mixture",
    "uniform_step",
]

Level = lv.Level


def _draw_where(
    law: ChunkLaw, chosen: Tensor, out: Tensor, u_block: Tensor, u_within: Tensor
) -> Tensor:
    """``out`` with the ``chosen`` rows replaced by draws from ``law``.

    On a CPU only the chosen rows are drawn; on an accelerator every row is (O(sqrt K) each),
    which avoids the host sync of a data-dependent ``nonzero``.
    """
    if out.device.type == "cpu":
        picked = chosen.nonzero().squeeze(-1)
        out[picked] = law.draw(picked, u_block[picked], u_within[picked])
        return out
    every = torch.arange(out.numel(), device=out.device)
    return torch.where(chosen, law.draw(every, u_block, u_within), out)


def _kernel_keys(generator: Source, n: int, device: torch.device) -> tuple[Tensor, tuple | None]:
    """The Philox keys of the Triton step from ``generator`` (``triton_step``'s ``keys`` and
    ``row_call``): a ``RowStream``'s keys of the rows and of this draw (no extra pass), or one
    int64 seed drawn from a ``torch.Generator`` (no host sync)."""
    if isinstance(generator, RowStream):
        keys = generator.row_keys(generator.rows_of(n), device)
        return keys, (generator.next_call(), generator.length)
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)
    return seed.to(device), None


def uniform_step(
    logits: Tensor,
    z_t: Tensor,
    alpha_s: float | Tensor,
    alpha_t: float | Tensor,
    kappa: float | Tensor | None,
    top_k: int | None,
    top_p: float | None,
    generator: Source,
    backend: Backend = "auto",
) -> Tensor:
    """The uniform step on trusted inputs; levels are floats or flattened float64 (B*L,).

    Without top-k / nucleus filtering it runs ``discdiff.kernels``' Triton step where
    ``discdiff.kernels.dispatch`` says so for ``backend`` (on CUDA when Triton imports): one
    read of the logits; the same law, from its own random stream, keyed per token by a
    ``RowStream`` when ``generator`` is one. Filtering always takes the PyTorch path.
    """
    b, ln, k = logits.shape
    device = logits.device
    n = b * ln
    flat = logits.reshape(n, k)
    z_flat = z_t.reshape(n)
    unfiltered = top_k is None and top_p is None
    if unfiltered and use_triton(logits, backend):
        keys, row_call = _kernel_keys(generator, n, device)
        z = z_flat.to(torch.int64)
        return triton_step(flat, z, alpha_s, alpha_t, kappa, keys, row_call).reshape(b, ln)
    u_mix = uniforms(n, generator, device)
    noise = randint(k, n, generator, device)
    u_block, u_within = uniforms(n, generator, device), uniforms(n, generator, device)
    z_s = torch.empty_like(z_flat)
    block = block_size(k)
    for sl in row_chunks(n, k, device):
        w = softmax_weights(flat[sl], exclude=None, top_k=top_k, top_p=top_p)
        law = ChunkLaw.of(w, block, "logits")
        z = z_flat[sl]
        x_zt = w.gather(1, z.unsqueeze(-1)).squeeze(-1).to(torch.float64) / law.total
        kap = None if kappa is None else lv.rows(kappa, sl)
        p_stay, p_xhat = uniform_mixture(x_zt, lv.rows(alpha_s, sl), lv.rows(alpha_t, sl), kap, k)
        u = u_mix[sl]
        stay = u < p_stay
        from_xhat = ~stay & (u < p_stay + p_xhat)
        out = torch.where(stay, z, noise[sl])
        z_s[sl] = _draw_where(law, from_xhat, out, u_block[sl], u_within[sl])
    return z_s.reshape(b, ln)


@provide("uniform_ancestral_step")
@typechecked
def uniform_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
    *,
    kappa: Level | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | RowStream | None = None,
    backend: Backend = "auto",
) -> Int[Tensor, "b l"]:
    """One reverse step t -> s of the uniform-state process: z_s ~ q(z_s | z_t, x_hat), or the
    Ψ step kappa q(z_s | z_t, x_hat) + (1 - kappa) (alpha_s q0 + (1 - alpha_s) / K) with q0 the
    denoising posterior q(z_0 | z_t, x_hat) (Concepts §5; ``uniform_mixture`` derives both).

    ``logits`` (B, L, K) from the denoiser; x_hat = softmax(logits) after top-k / nucleus
    filtering, renormalised. ``alpha_s >= alpha_t`` and ``kappa`` in [0, 1] are numbers or
    tensors (B, 1) / (B, L); kappa None or 1 is the ancestral step (bit-identical samples for
    the same generator state). Exact: the law of each token is the explicit
    ``discdiff.samplers.psi_posterior`` (checked by chi-square in the tests).

    Randomness, in order: a float64 uniform per token (component), a uniform token per token,
    two float64 uniforms per token (the x_hat draw), whatever the component chosen, from
    ``generator``: a ``torch.Generator`` or a ``RowStream`` (row b of z_s then depends only on
    row b of the inputs and the stream's seed). Without top-k / top-p, where
    ``discdiff.kernels.dispatch``'s rule picks Triton for ``backend`` ("auto": on CUDA when
    Triton imports and the logits are not float64; "triton" forces it, "torch" excludes it),
    the step is ``discdiff.kernels``' one pass over the logits instead: the same law, drawn from
    Philox streams keyed by ``generator`` (per token by a ``RowStream``).
    """
    check_filters(top_k, top_p)
    if backend == "triton" and (top_k is not None or top_p is not None):
        raise ValueError(
            "backend='triton' draws from the unfiltered x_hat: pass top_k=None and top_p=None, "
            "or backend='auto' / 'torch' to filter"
        )
    b, ln, k = logits.shape
    check_tokens(z_t, k, "z_t")
    check_stream(generator, ln)
    a_s = lv.level(alpha_s, b, ln, "alpha_s", logits)
    a_t = lv.level(alpha_t, b, ln, "alpha_t", logits)
    lv.check_ordered(a_s, a_t)
    kap = None if kappa is None else lv.flat(lv.level(kappa, b, ln, "kappa", logits))
    z = z_t.to(logits.device)
    return uniform_step(
        logits, z, lv.flat(a_s), lv.flat(a_t), kap, top_k, top_p, generator, backend
    )


def unmask_probability(
    a_s: float | Tensor, a_t: float | Tensor, sigma: float | Tensor, device: torch.device
) -> Tensor:
    """p_unmask = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t) in [0, 1], float64 (1 at
    alpha_t = 1)."""
    a_s = torch.as_tensor(a_s, dtype=torch.float64, device=device)
    a_t = torch.as_tensor(a_t, dtype=torch.float64, device=device)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    one_minus = 1 - a_t
    return torch.where(
        one_minus > 0, (a_s - (1 - sigma) * a_t) / torch.where(one_minus > 0, one_minus, 1.0), 1.0
    ).clamp(0.0, 1.0)


def masked_step(
    logits: Tensor,
    z_t: Tensor,
    alpha_s: float | Tensor,
    alpha_t: float | Tensor,
    mask_id: int,
    sigma: float | Tensor | None,
    top_k: int | None,
    top_p: float | None,
    generator: Source,
) -> Tensor:
    """The masked step on trusted inputs; levels are floats or flattened float64 (B*L,)."""
    b, ln, k = logits.shape
    device = logits.device
    n = b * ln
    flat = logits.reshape(n, k)
    z_flat = z_t.reshape(n)
    u = uniforms(n, generator, device)
    u_block, u_within = uniforms(n, generator, device), uniforms(n, generator, device)
    p_unmask = unmask_probability(alpha_s, alpha_t, 0.0 if sigma is None else sigma, device)
    masked = z_flat == mask_id
    z_s = z_flat.clone()
    if sigma is not None:
        z_s = torch.where(~masked & (u < sigma), mask_id, z_s)
    unmask = masked & (u < p_unmask)
    block = block_size(k)
    if device.type == "cpu":  # only the unmasking rows touch the logits
        picked = unmask.nonzero().squeeze(-1)
        for sl in row_chunks(picked.numel(), k, device):
            idx = picked[sl]
            w = softmax_weights(flat[idx], exclude=mask_id, top_k=top_k, top_p=top_p)
            law = ChunkLaw.of(w, block, "logits")
            local = torch.arange(idx.numel(), device=device)
            z_s[idx] = law.draw(local, u_block[idx], u_within[idx])
        return z_s.reshape(b, ln)
    for sl in row_chunks(n, k, device):  # no data-dependent shapes: no host sync
        w = softmax_weights(flat[sl], exclude=mask_id, top_k=top_k, top_p=top_p)
        law = ChunkLaw.of(w, block, "logits")
        z_s[sl] = _draw_where(law, unmask[sl], z_s[sl], u_block[sl], u_within[sl])
    return z_s.reshape(b, ln)


@typechecked
def masked_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
    *,
    mask_id: int,
    remask: Level | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | RowStream | None = None,
) -> Int[Tensor, "b l"]:
    """One reverse step t -> s of the masked (absorbing) process with SUBS and optional ReMDM
    remasking.

    x_hat = softmax(logits) with the mask class removed (SUBS: its logit is -inf), filtered by
    top-k / nucleus and renormalised. Unmasked tokens stay (SUBS carry-over), except that with
    ``remask`` = sigma in [0, sigma_max], sigma_max = min(1, (1 - alpha_s) / alpha_t), each is
    remasked with probability sigma. A masked token unmasks, drawing from x_hat, with probability

        p_unmask = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t),

    which keeps the marginal: P(unmasked at s) = alpha_t (1 - sigma) + (1 - alpha_t) p_unmask
    = alpha_s. sigma = 0 is MDLM's (alpha_s - alpha_t) / (1 - alpha_t). ReMDM is the Ψ-sampler
    of the masked process: the posterior mixed (weight kappa) with the forward
    alpha_s x_hat + (1 - alpha_s) m gives these probabilities with
    sigma = (1 - kappa)(1 - alpha_s).

    Randomness, in order: three float64 uniforms per token (decision, then the two-stage x_hat
    draw), whatever the decision, from ``generator`` (a ``torch.Generator`` or a ``RowStream``).
    """
    check_filters(top_k, top_p)
    b, ln, k = logits.shape
    check_tokens(z_t, k, "z_t")
    check_stream(generator, ln)
    check_count(mask_id, "mask_id", minimum=0)
    if mask_id >= k:
        raise ValueError(f"mask_id={mask_id} is outside [0, {k}) (K from logits)")
    a_s = lv.level(alpha_s, b, ln, "alpha_s", logits)
    a_t = lv.level(alpha_t, b, ln, "alpha_t", logits)
    lv.check_ordered(a_s, a_t)
    a_s, a_t = lv.flat(a_s), lv.flat(a_t)
    sigma = None if remask is None else lv.flat(lv.level(remask, b, ln, "remask", logits))
    if sigma is not None and checks_enabled():
        a_t_ = torch.as_tensor(a_t, dtype=torch.float64)
        a_s_ = torch.as_tensor(a_s, dtype=torch.float64)
        sigma_max = torch.where(
            a_t_ > 0, ((1 - a_s_) / torch.where(a_t_ > 0, a_t_, 1.0)).clamp(max=1.0), 1.0
        )
        reject_if(
            torch.as_tensor(sigma, dtype=torch.float64) > sigma_max + 1e-12,
            "remask probability sigma exceeds sigma_max = min(1, (1 - alpha_s) / alpha_t): "
            "the unmasking probability would exceed 1",
        )
    z = z_t.to(logits.device)
    return masked_step(logits, z, a_s, a_t, mask_id, sigma, top_k, top_p, generator)
