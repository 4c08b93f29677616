"""The NELBOs as Concepts §3 writes them: readable, dense over the K classes, for the tests and
baselines.

These are the formulas, not the fast paths. ``uniform_nelbo_reference`` materialises x̄ and x̄_θ
as (B, L, K) tensors and lets autograd keep what it needs, several (B, L, K) tensors; the
library's ``uniform_nelbo`` computes the same number without any of them (its algebra is
rewritten, see ``discdiff.losses.uniform``). Both reference functions run in the dtype of the
logits (float64 logits give a float64 loss) and check nothing: the inputs are trusted.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.typing import Level

__all__ = ["masked_nelbo_reference", "uniform_nelbo_reference"]


def _level(level: Tensor | float, like: Tensor) -> Tensor:
    """alpha_t or dalpha_t as a (B, L) tensor in the logits' dtype."""
    return torch.as_tensor(level, dtype=like.dtype, device=like.device).expand(like.shape[:-1])


def uniform_nelbo_reference(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
) -> Float[Tensor, "b l"]:
    """Uniform-state NELBO per token, the Concepts §3 formula term by term.

    With x̄ = Kα_t **x** + (1 - α_t), x̄_θ = Kα_t x̂ + (1 - α_t) and i = z_t::

        loss = (α'_t / (K α_t)) [K/x̄_i - K/x̄_θ,i - Σ_{j≠i} (x̄_j/x̄_i) log(x̄_θ,i x̄_j / (x̄_θ,j x̄_i))]

    α_t in (0, 1): at α_t = 1 the classes j ≠ x have x̄_j = 0 and the formula reads 0 · log 0.
    """
    k = logits.shape[-1]
    alpha = _level(alpha_t, logits).unsqueeze(-1)  # (B, L, 1)
    dalpha = _level(dalpha_t, logits)
    x_hat = logits.softmax(-1)
    # Kα x + (1 - α) with x the one-hot of x_0: 1 - α everywhere, plus Kα at x_0.
    x_bar = (1 - alpha).expand(logits.shape).scatter_add(-1, x_0.unsqueeze(-1), k * alpha)
    x_bar_theta = k * alpha * x_hat + (1 - alpha)
    i = z_t.unsqueeze(-1)
    x_bar_i = x_bar.gather(-1, i)
    x_bar_theta_i = x_bar_theta.gather(-1, i)
    # log(x̄_θ,i x̄_j / (x̄_θ,j x̄_i)) as (log x̄_θ,i - log x̄_θ,j) + (log x̄_j - log x̄_i): at j = i
    # both differences are exactly 0 in floating point, so the sum over all j is the sum over j ≠ i.
    log_x_bar_theta = x_bar_theta.log()
    log_ratio = (log_x_bar_theta.gather(-1, i) - log_x_bar_theta) + (x_bar.log() - x_bar_i.log())
    sum_j_not_i = ((x_bar / x_bar_i) * log_ratio).sum(-1)
    bracket = k / x_bar_i.squeeze(-1) - k / x_bar_theta_i.squeeze(-1) - sum_j_not_i
    return dalpha / (k * alpha.squeeze(-1)) * bracket


def masked_nelbo_reference(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    mask_id: int,
) -> Float[Tensor, "b l"]:
    """Masked-diffusion NELBO per token (MDLM, SUBS), the Concepts §3 formula term by term.

    x̂ = softmax of the logits with the mask logit set to -∞;
    loss = (α'_t / (1 - α_t)) · log x̂[x_0] where z_t is the mask token, 0 elsewhere; α_t in (0, 1).
    """
    alpha = _level(alpha_t, logits)
    dalpha = _level(dalpha_t, logits)
    is_mask_class = torch.arange(logits.shape[-1], device=logits.device) == mask_id
    log_x_hat = logits.masked_fill(is_mask_class, -torch.inf).log_softmax(-1)
    log_x_hat_x = log_x_hat.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
    masked = z_t == mask_id
    return torch.where(masked, dalpha / (1 - alpha) * log_x_hat_x, 0.0)
