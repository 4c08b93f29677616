"""One uniform-state reverse step t -> s (ancestral, or Ψ with κ), never forming a (B, L, K) law.

Concepts §5. With α_ts = α_t / α_s, i = z_t and x̂ = softmax(logits), the ancestral posterior is a
three-part mixture, normalised by N = Kα_t x̂_i + 1 - α_t:

    stay at z_t      (Kα_t x̂_i + α_ts - α_t) / N
    draw from x̂      (α_s - α_t) / N
    draw uniformly   (1 - α_ts)(1 - α_s) / N

The Ψ step mixes it with the forward re-noising of the denoising posterior,
q = κ · posterior + (1 - κ) · (α_s q0 + (1 - α_s)/K), where q0(j) ∝ (α_t [j = i] + (1 - α_t)/K) x̂_j
is itself "stay" (weight α_t x̂_i) or "draw from x̂" (weight (1 - α_t)/K), normalised by
M = α_t x̂_i + (1 - α_t)/K. So Ψ is the same three parts with weights

    stay    κ · posterior_stay + (1 - κ) α_s α_t x̂_i / M
    x̂       κ · posterior_x̂    + (1 - κ) α_s (1 - α_t) / (K M)
    uniform κ · posterior_unif + (1 - κ)(1 - α_s)

Per token the step needs x̂_i (the softmax normaliser), one exact draw from x̂ and O(1) work.

The x̂ draw is exact in both paths. The Triton kernel runs an exponential race in float64 in the
same single pass over the row that forms the normaliser: j* = argmax_j (ℓ_j - log E_j) with
E_j ~ Exp(1) independent has law softmax(ℓ) exactly (P(j* = j) = e^ℓ_j / Σ e^ℓ), whatever the
normaliser, which the race never needs. E_j = -log u_j with u_j = (m + 1/2) 2^-52 from 52 random
bits m (Philox, a key per row); u_j and 1 - u_j are exact in float64 and E_j is taken from
whichever is accurate, so E_j is the inverse CDF of Exp(1) at a 52-bit uniform. Coupled with an
exact race, the winner can change only when the two best keys lie closer than their
perturbation by this grid (about 2^-53 / E of the key, E ~ 1/K for the winner of a flat row) or
by float64 rounding (2^-53 |key|); the gap between the two best keys has a density of at most
about 1, so the law differs from softmax(ℓ) by a total variation of order K · 2^-48 (about 2e-10
at K = 50k, class by class, the tail included). A float32 Gumbel-max instead quantises u to 24
bits, and with it the small E that decide a flat row. The float32 screening of the race keys
changes nothing (see ``_triton._step_kernel``). The mixture weights use x̂[z_t] from a float32
normaliser, as the PyTorch path does (relative error ~1e-7). The PyTorch path draws x̂ with
``discdiff.samplers.categorical.sample_categorical_logits`` (two-stage inverse CDF, float64).

Randomness: from a ``torch.Generator`` the kernel draws one seed and keys token r's Philox
stream by seed + r (r the flattened B·L index); from a ``RowStream`` (row-wise randomness) token
(b, l) takes the key (key of row b ^ key of the call) + l, a function of (seed, b, call, l)
(``discdiff.samplers.streams``), so row b draws the same numbers whatever the batch. The
PyTorch path draws both through ``discdiff.samplers.categorical``'s ``uniforms`` / ``randint``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.kernels._backend import Backend, use_triton
from discdiff.losses._common import Level, per_token
from discdiff.samplers.categorical import (
    Source,
    randint,
    row_chunks,
    sample_categorical_logits,
    uniforms,
)
from discdiff.samplers.streams import RowStream, check_stream
from discdiff.typing import check_finite, check_range, check_tokens, reject_if, typechecked

__all__ = ["mixture_weights", "uniform_ancestral_step"]


def mixture_weights(
    p_i: Tensor, alpha_s: Tensor, alpha_t: Tensor, kappa: Tensor | None, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(stay, draw from x̂, draw uniformly) weights of a step, normalised, from x̂[z_t] = p_i
    (float64 tensors broadcasting together). α_ts = α_t/α_s with 0/0 = 1 (pure noise to pure
    noise: nothing happens)."""
    a_ts = torch.where(alpha_s > 0, alpha_t / torch.where(alpha_s > 0, alpha_s, 1.0), 1.0)
    norm = k * alpha_t * p_i + 1 - alpha_t
    stay = (k * alpha_t * p_i + a_ts - alpha_t) / norm
    hat = (alpha_s - alpha_t) / norm
    unif = (1 - a_ts) * (1 - alpha_s) / norm
    if kappa is not None:
        q0 = alpha_t * p_i + (1 - alpha_t) / k
        stay = kappa * stay + (1 - kappa) * alpha_s * alpha_t * p_i / q0
        hat = kappa * hat + (1 - kappa) * alpha_s * (1 - alpha_t) / (k * q0)
        unif = kappa * unif + (1 - kappa) * (1 - alpha_s)
    total = stay + hat + unif
    return stay / total, hat / total, unif / total


def _log_softmax_at(logits: Tensor, index: Tensor) -> Tensor:
    """log x̂[index] per row of (n, K) logits, float64, chunk by chunk (no (n, K) temporary)."""
    n, k = logits.shape
    out = torch.empty(n, dtype=torch.float64, device=logits.device)
    for sl in row_chunks(n, k, logits.device):
        rows = logits[sl]
        lse = torch.logsumexp(rows.to(torch.float32), dim=-1)
        out[sl] = rows.gather(1, index[sl, None]).squeeze(1).to(torch.float64) - lse.double()
    return out


def _torch_step(
    logits: Tensor, z: Tensor, a_s: Tensor, a_t: Tensor, kappa: Tensor | None, generator: Source,
) -> Tensor:  # fmt: skip
    n, k = logits.shape
    device = logits.device
    p_i = _log_softmax_at(logits, z).exp()
    stay, hat, _ = mixture_weights(p_i, a_s, a_t, kappa, k)
    drawn = sample_categorical_logits(logits, generator=generator)
    u = uniforms(n, generator, device)
    uniform = randint(k, n, generator, device)
    out = torch.where(u < stay + hat, drawn, uniform)
    return torch.where(u < stay, z, out)


def _seed(generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A one-element int64 seed on ``device``, drawn from ``generator`` (no host sync)."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)
    return seed.to(device)


def _flat_level(level: Level, shape: torch.Size, like: Tensor, name: str) -> Tensor:
    check_range(level, name, 0.0, 1.0)
    return per_token(level, shape, like, torch.float64).reshape(-1).contiguous()


@typechecked
def uniform_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
    *,
    kappa: Level | None = None,
    generator: torch.Generator | RowStream | None = None,
    backend: Backend = "auto",
) -> Int[Tensor, "b l"]:
    """Draw z_s ~ q(z_s | z_t, x̂) for one reverse step t -> s (Concepts §5), x̂ = softmax(logits).

    Args:
        logits: (B, L, K) denoiser output at (z_t, t).
        z_t: (B, L) current tokens.
        alpha_s, alpha_t: signal levels with 0 <= α_t <= α_s <= 1; floats, 0-d, (B, 1) or (B, L).
        kappa: None for the ancestral step, else the Ψ mixing weight κ in [0, 1] (κ = 1 is
            ancestral): q = κ · posterior + (1 - κ) · (α_s q0 + (1 - α_s)/K), q0 the denoising
            posterior q(z_0 | z_t, x̂). Same shapes as the levels.
        generator: the source of randomness: a ``torch.Generator`` (a seed for the kernel is
            drawn from it) or a ``RowStream`` (each row's draws keyed by (seed, row): row b of
            z_s is the same whatever the batch size).
        backend: "auto" (Triton on CUDA when it imports, else PyTorch), "torch" or "triton".

    Returns:
        (B, L) int64 tokens z_s. The Triton path reads the logits once; neither path allocates
        anything of size (B, L, K).
    """
    b, length, k = logits.shape
    shape = z_t.shape
    if shape != (b, length):
        raise ValueError(f"z_t must have shape (B, L) = ({b}, {length}), got {tuple(shape)}")
    check_tokens(z_t, k, "z_t")
    check_stream(generator, length)
    check_finite(logits, "logits")
    a_s = _flat_level(alpha_s, shape, logits, "alpha_s")
    a_t = _flat_level(alpha_t, shape, logits, "alpha_t")
    reject_if(a_s < a_t, "alpha_s must be >= alpha_t (s < t: the reverse step gains signal)")
    kap = None if kappa is None else _flat_level(kappa, shape, logits, "kappa")
    z = z_t.reshape(-1).to(torch.int64).contiguous()
    flat = logits.reshape(b * length, k)
    if use_triton(logits, backend):
        out = triton_step(flat, z, a_s, a_t, kap, generator)
    else:
        out = _torch_step(flat, z, a_s, a_t, kap, generator)
    return out.view(b, length)


def triton_step(
    logits: Tensor, z: Tensor, alpha_s: Tensor | float, alpha_t: Tensor | float,
    kappa: Tensor | float | None, generator: Source,
) -> Tensor:  # fmt: skip
    """The Triton step on trusted inputs (no checks): logits (n, K), z (n,) int64, levels floats
    or (n,) float64. What ``uniform_ancestral_step`` and the samplers' loops run on CUDA."""
    from discdiff.kernels import _triton

    n = logits.shape[0]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    device = logits.device

    def rows(level: Tensor | float) -> Tensor:
        return torch.as_tensor(level, dtype=torch.float64, device=device).expand(n).contiguous()

    kap = None if kappa is None else rows(kappa)
    out = torch.empty(n, dtype=torch.int64, device=device)
    levels = (z.contiguous(), rows(alpha_s), rows(alpha_t), kap)
    if isinstance(generator, RowStream):  # keys of the rows and of this draw (no extra pass)
        keys = generator.row_keys(generator.rows_of(n), device)
        row_call = (generator.next_call(), generator.length)
        _triton.ancestral_step(logits, *levels, keys, out, row_call=row_call)
    else:
        _triton.ancestral_step(logits, *levels, _seed(generator, device), out)
    return out
