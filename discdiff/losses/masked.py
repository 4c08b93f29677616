"""The masked (absorbing) NELBO, SUBS parameterisation (MDLM)."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from discdiff.losses._common import (
    Reduction,
    check_common,
    check_levels,
    check_mask,
    check_mask_id,
    check_reduction,
    log_prob_without_mask,
    per_token,
    reduce_loss,
    result_dtype,
)
from discdiff.typing import Level, typechecked

__all__ = ["masked_nelbo"]


@typechecked
def masked_nelbo(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    mask_id: int,
    *,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """Continuous-time masked-diffusion NELBO per token (MDLM, SUBS; Concepts §3).

    loss = (α'_t / (1 - α_t)) · log x̂[x_0] where z_t = mask_id, 0 elsewhere (SUBS copies the
    unmasked tokens). x̂ is the softmax of the logits with the mask logit set to -∞; the input
    logits are not modified. Shapes and dtypes as in ``uniform_nelbo``; K (from logits) counts the
    mask token. Result >= 0.

    ``mask`` (B, L) bool, True at the tokens that count (None: all), and ``reduction`` ("none",
    "sum", "mean" over the tokens that count) as in ``uniform_nelbo``: ignored tokens give 0.
    ``mask`` (which tokens count) is not ``mask_id`` (the absorbing token's id).
    """
    k = check_common(logits, x_0, z_t)
    check_mask_id(mask_id, k, x_0)
    check_mask(mask, x_0.shape)
    check_reduction(reduction)
    check_levels(alpha_t, dalpha_t, "alpha_t")
    out_dtype = result_dtype(logits, alpha_t, dalpha_t)
    shape = x_0.shape
    log_p = log_prob_without_mask(logits, x_0, mask_id).to(out_dtype)
    alpha = per_token(alpha_t, shape, logits, out_dtype)
    dalpha = per_token(dalpha_t, shape, logits, out_dtype)
    masked = z_t == mask_id
    # 1 - α is floored so that unmasked positions at α = 1 (weight unused) stay finite.
    weight = torch.where(masked, dalpha / (1 - alpha).clamp_min(torch.finfo(out_dtype).tiny), 0.0)
    return reduce_loss(torch.where(masked, weight * log_p, 0.0), mask, reduction)
