"""Argument handling and the small numerics that more than one loss shares."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from discdiff.numerics import g_small
from discdiff.typing import (
    check_count,
    check_finite,
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
)

"""alpha_t or dalpha_t: a python number, a 0-d tensor, or a tensor broadcasting as (B, 1)/(B, L)."""

Reduction = Literal["none", "sum", "mean"]
"""How a loss is returned: "none" per token (B, L); "sum" or "mean" over the tokens that count."""


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------


def accumulation_dtype(device: torch.device) -> torch.dtype:
    # Per-row scalars are cheap (B*L of them): keep them in float64 wherever float64 exists.
    return torch.float32 if device.type == "mps" else torch.float64


def result_dtype(logits: Tensor, *levels: Tensor | float) -> torch.dtype:
    dtype = logits.dtype
    for level in levels:
        if isinstance(level, Tensor):
            dtype = torch.promote_types(dtype, level.dtype)
    return torch.promote_types(dtype, torch.float32)  # half inputs give a float32 loss


def prior_dtype(alpha_1: Tensor | float) -> torch.dtype:
    if isinstance(alpha_1, Tensor):
        return torch.promote_types(alpha_1.dtype, torch.float32)
    return torch.get_default_dtype()


# ---------------------------------------------------------------------------------------------
# Checks, once at the door of each public loss
# ---------------------------------------------------------------------------------------------


def check_levels(alpha: Tensor | float, dalpha: Tensor | float, alpha_name: str) -> None:
    check_range(alpha, alpha_name, 0.0, 1.0, open_lo=True)
    if checks_enabled():
        d = torch.as_tensor(dalpha)
        bad = ~torch.isfinite(d) | (d > 0)
        if bool(bad.any()):
            value = d[bad].flatten()[0].item()
            raise ValueError(
                f"dalpha_t must be finite and <= 0 (alpha_t decreases with t), got {value}"
            )


def _check_logits_finite(logits: Tensor) -> None:
    # One streaming reduction (max propagates NaN) instead of a (B, L, K) boolean mask; the full
    # check, with its message, runs only when something is wrong.
    if checks_enabled() and logits.numel() > 0:
        top = logits.detach().amax()
        if bool(torch.isnan(top)) or bool(torch.isposinf(top)):
            check_finite(logits, "logits")


def check_common(
    logits: Tensor, x_0: Tensor, z_t: Tensor | None, z_name: str = "z_t", x_name: str = "x_0"
) -> int:
    """Check the logits and token ids of a loss; return K, read from the logits' last axis."""
    k = logits.shape[-1]
    check_vocab_size(k, "logits.shape[-1] (the vocabulary size K)")
    check_tokens(x_0, k, x_name)
    if z_t is not None:
        check_tokens(z_t, k, z_name)
    _check_logits_finite(logits)
    return k


def check_mask_id(mask_id: int, k: int, x_0: Tensor) -> None:
    if check_count(mask_id, "mask_id", minimum=0) >= k:
        raise ValueError(f"mask_id must be a token id in [0, {k}) (K from logits), got {mask_id}")
    if checks_enabled() and bool((x_0 == mask_id).any()):
        raise ValueError(f"x_0 contains the mask token mask_id={mask_id}; clean data never does")


def check_reduction(reduction: Any) -> Reduction:
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    return reduction


def check_mask(mask: Any, shape: torch.Size | tuple[int, ...], name: str = "mask") -> None:
    """``mask`` is None or a bool tensor of the tokens' shape (True at the tokens that count)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"{name} must be a bool tensor, True at the tokens that count (e.g. "
            f"x_0 != pad_id), got {got}"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the tokens' shape (B, L) = {tuple(shape)}, got {tuple(mask.shape)}"
        )


def reduce_loss(loss: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    """Per-token ``loss`` (B, L) with the ignored tokens set to 0 ("none"), or their sum or mean
    over the tokens where ``mask`` is True (all tokens without a mask).

    ``torch.where``, not a product: an ignored token's loss may be inf or NaN (a padding token is
    not drawn from the forward process) and must not reach the result or the gradient. "mean"
    divides by the number of tokens that count; with none it is 0 (a step on a batch of padding
    changes nothing), not NaN.
    """
    if mask is not None:
        loss = torch.where(mask.to(loss.device), loss, 0.0)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = loss.numel() if mask is None else mask.sum()
    return total / (count.clamp_min(1) if isinstance(count, Tensor) else max(count, 1))


def per_token(level: Tensor | float, shape: torch.Size, like: Tensor, dtype: torch.dtype) -> Tensor:
    """Broadcast alpha_t / dalpha_t to (B, L) in ``dtype`` on ``like``'s device (differentiably)."""
    if isinstance(level, Tensor):
        return level.to(device=like.device, dtype=dtype).expand(shape)
    return torch.full(shape, level, dtype=dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# Shared numerics
# ---------------------------------------------------------------------------------------------


def g(z: Tensor) -> Tensor:
    """z - log1p(z) for z > -1, accurate to rounding everywhere (series near 0)."""
    near = z.abs() <= 0.1
    return torch.where(near, g_small(torch.where(near, z, 0.0)), z - torch.log1p(z))


def log_prob_without_mask(logits: Tensor, x_0: Tensor, mask_id: int) -> Tensor:
    """log x̂[x_0] with the mask logit excluded (-∞), without copying or editing the logits."""
    lse = torch.logaddexp(
        torch.logsumexp(logits[..., :mask_id], dim=-1),
        torch.logsumexp(logits[..., mask_id + 1 :], dim=-1),
    )
    return logits.gather(-1, x_0.unsqueeze(-1)).squeeze(-1) - lse
