"""Block diffusion (BD3-LM; Concepts, "Block diffusion"): the block NELBO of either process.

A sequence of L tokens is cut into n = L / b blocks x^1 ... x^n of b tokens, and
log p(x) = sum_k log p(x^k | x^{<k}): each factor is a diffusion over one block whose denoiser
also reads the clean blocks before it. The NELBO is the sum over blocks of the process's
per-token bound on block k at its own time t_k, the n times drawn antithetically over the batch
and the blocks (``discdiff.timesteps.antithetic_times(..., blocks=n)``).

The denoiser is a *block model*: an integer attribute ``block_size`` (b) and
``reads_token_levels = True``, called for training as ``model(z_t, sigma, x_0=x_0, **cond)``
with z_t (B, L) (ids, or the curriculum's relaxed input), sigma (B, L) the per-token noise level
(constant on each block; 0 at clean context) and x_0 (B, L) the clean copy; the logits (B, L, K)
of noisy block i may depend only on z_t and sigma of block i and on x_0 of the blocks j < i
(the DiT's three-part attention mask; ``discdiff.testing.blocks`` has an exact toy). The same
model samples block by block over a cache of the clean blocks (``discdiff.samplers.blocks``).

Everything here takes trusted inputs: the public doors are ``UniformDiffusion`` /
``MaskedDiffusion`` built with ``block_size=b`` (``loss``, ``nelbo``, ``sample``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from discdiff.checks import check_count
from discdiff.context import require_token_levels
from discdiff.denoise import denoise, denoise_head
from discdiff.losses._common import Reduction
from discdiff.losses.dispatch import use_fused_head
from discdiff.processes import NELBO, MaskedProcess, Process
from discdiff.schedules import Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import Denoiser, check_range

__all__ = [
    "block_integrand",
    "block_levels",
    "block_logits",
    "block_nelbo",
    "block_times",
    "check_block_model",
    "check_block_size",
    "model_block_size",
    "per_token",
]

_Cond = Mapping[str, Any] | None


def check_block_size(block_size: Any) -> int | None:
    """``block_size``: None (ordinary diffusion) or a positive int b."""
    if block_size is None:
        return None
    return check_count(block_size, "block_size")


def model_block_size(model: Any) -> int | None:
    """The ``block_size`` a model declares (through a ``torch.compile`` or DDP / FSDP wrapper
    too), or None when it declares none."""
    for obj in (model, getattr(model, "_orig_mod", None), getattr(model, "module", None)):
        size = getattr(obj, "block_size", None) if obj is not None else None
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    return None


def check_block_model(model: Any, block_size: int, needs_token_levels: bool) -> None:
    """ValueError unless ``model`` is a block model of block size ``block_size`` that reads
    per-token levels where the process needs them (the uniform one: a clean block looks like a
    noisy one, only its level 0 tells them apart)."""
    declared = model_block_size(model)
    if declared != block_size:
        got = "declares no block_size" if declared is None else f"has block_size={declared}"
        raise ValueError(
            f"the diffusion has block_size={block_size} but the model {got}: a block model "
            "carries an integer attribute block_size (e.g. DiT.from_preset(..., "
            f"block_size={block_size})); build both with the same b, or the diffusion with "
            "block_size=None for an ordinary model"
        )
    if needs_token_levels:
        require_token_levels(model, "Block diffusion", "the clean blocks are context at level 0")


def check_length(length: int, block_size: int, what: str) -> int:
    """The number of blocks n = length / b; ValueError unless b divides ``length``."""
    if length % block_size:
        raise ValueError(
            f"{what} has L = {length} tokens, not a multiple of block_size={block_size}: crop "
            f"or pad the sequences to a multiple of {block_size}, or pick a block size that "
            f"divides {length}"
        )
    return length // block_size


def block_times(
    x_0: Tensor, block_size: int, eps: float, t: Any, generator: torch.Generator | None
) -> Float[Tensor, "b n"]:
    """One time per block, (B, n): antithetic over the batch and the blocks when ``t`` is None,
    else ``t`` itself, (B, n) or (B,) (the same time for every block of a row)."""
    b = x_0.shape[0]
    n = check_length(x_0.shape[1], block_size, "x_0")
    if t is None:
        # For data-parallel training pass t from AntitheticTimes(...)(B, step=..., blocks=n).
        return antithetic_times(b, eps=eps, generator=generator, device=x_0.device, blocks=n)
    if not isinstance(t, Tensor) or tuple(t.shape) not in ((b,), (b, n)):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must have shape (B, n) = ({b}, {n}) (one time per block) or (B,) "
                         f"= ({b},), got {got}")  # fmt: skip
    if not t.dtype.is_floating_point:
        raise ValueError(f"t must hold float times in [0, 1], got dtype {t.dtype}")
    check_range(t, "t", 0.0, 1.0)
    t = t.to(x_0.device)
    return t.unsqueeze(-1).expand(b, n) if t.ndim == 1 else t


def per_token(values: Tensor, block_size: int) -> Tensor:
    """(B, n) values per block -> (B, n * b), each repeated over its block's b tokens."""
    return values.repeat_interleave(block_size, dim=-1)


def block_levels(process: Process, alpha_t: Tensor, clean: Tensor | None) -> Tensor:
    """The per-token noise level sigma (B, L) float32 a block model sees: -log(alpha_t), 0 at
    ``clean`` positions; all 0 for a masked process without time conditioning (whose denoiser
    tells the levels by the masks alone). Computed in float64 before the cast."""
    alpha = alpha_t.to(torch.float64)
    if isinstance(process, MaskedProcess) and not process.time_conditioned:
        return torch.zeros(alpha.shape, dtype=torch.float32, device=alpha.device)
    sigma = -torch.log(alpha.clamp(min=0.0, max=1.0))
    if clean is not None:
        sigma = sigma.masked_fill(clean, 0.0)
    return sigma.to(torch.float32).contiguous()


def with_clean_copy(cond: _Cond, x_0: Tensor) -> dict[str, Any]:
    """The conditioning of a training call: the caller's plus ``x_0``, the clean copy."""
    if cond is not None and "x_0" in cond:
        raise ValueError("cond must not hold 'x_0': a block model gets the clean tokens as x_0 "
                         "from the loss itself")  # fmt: skip
    return {**(cond or {}), "x_0": x_0}


def block_logits(
    process: Process, model: Denoiser, z_in: Any, x_0: Tensor, alpha_t: Tensor, cond: _Cond,
    clean: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The block model's checked logits (B, L, K') at ``z_in`` with the clean copy ``x_0`` and
    per-token levels at ``alpha_t`` (B, L)."""
    sigma = block_levels(process, alpha_t, clean)
    return denoise(model, z_in, sigma, vocab_size=process.model_vocab_size,
                   cond=with_clean_copy(cond, x_0))  # fmt: skip


def block_integrand(
    process: Process, model: Denoiser, z_in: Any, x_0: Tensor, z_t: Tensor, alpha_t: Tensor,
    dalpha_t: Tensor, cond: _Cond, *, fused: bool | None, mask: Tensor | None,
    reduction: Reduction, clean: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """The process's NELBO integrand at per-token levels ``alpha_t``, ``dalpha_t`` (B, L) (one
    value per block) from one training call of the block model: per token (B, L) or reduced.
    ``z_in`` is ``z_t`` or the curriculum's relaxed input whose argmax is ``z_t``; the loss is
    fused with the model's output layer where ``use_fused_head`` says so."""
    kw: dict[str, Any] = {"mask": mask, "reduction": reduction}
    k = process.model_vocab_size
    if use_fused_head(model, fused, x_0.numel(), k, x_0.device, reduction):
        sigma = block_levels(process, alpha_t, clean)
        head = denoise_head(model, z_in, sigma, vocab_size=k, cond=with_clean_copy(cond, x_0))
        return process.fused_diffusion_loss(head, x_0, z_t, alpha_t, dalpha_t, **kw)
    logits = block_logits(process, model, z_in, x_0, alpha_t, cond, clean)
    return process.diffusion_loss(logits, x_0, z_t, alpha_t, dalpha_t, **kw)


def block_nelbo(
    process: Process, model: Denoiser, x_0: Tensor, t: Tensor, schedule: Schedule, eps: float,
    block_size: int, *, generator: torch.Generator | None = None, cond: _Cond = None,
    clean: Tensor | None = None,
) -> NELBO:  # fmt: skip
    """The block NELBO per token (B, L): block k's diffusion term at its time t[:, k] (``t``
    (B, n)), the prior KL at t = 1 and the reconstruction at t = eps of every block (one call:
    block k's logits read only its own noisy tokens and the clean blocks before it). Draws in
    the order of ``Process.nelbo``, so at b = L it is that bound on the same noise."""
    t = t.to(device=x_0.device, dtype=torch.promote_types(t.dtype, torch.float32))
    t_tok = per_token(t, block_size)
    alpha_t, dalpha_t = schedule.alpha(t_tok), schedule.dalpha_dt(t_tok)
    z_t = process.corrupt(x_0, alpha_t, generator=generator, clean=clean)
    loss = block_integrand(
        process, model, z_t, x_0, z_t, alpha_t, dalpha_t, cond, fused=False,
        mask=None if clean is None else ~clean, reduction="none", clean=clean,
    )  # fmt: skip
    # Each t_k ~ U[eps, 1]: the integral over [eps, 1] is (1 - eps) times the mean integrand.
    diffusion = ((1 - eps) * loss).float()
    one = torch.ones(x_0.shape[0], 1, device=x_0.device)
    prior = process.prior(x_0, schedule.alpha(one)).float()
    alpha_eps = schedule.alpha(one * eps)
    z_eps = process.corrupt(x_0, alpha_eps, generator=generator, clean=clean)
    logits = block_logits(process, model, z_eps, x_0, alpha_eps.expand(x_0.shape), cond, clean)
    reconstruction = process.reconstruction(logits, x_0, z_eps, alpha_eps).float()
    if clean is not None:
        prior = prior.masked_fill(clean, 0)
        reconstruction = reconstruction.masked_fill(clean, 0)
    return NELBO(diffusion, prior, reconstruction)
