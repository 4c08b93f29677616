"""Two meanings of a uniform-state denoiser's logits, and the exact conversion between them.

One token of the uniform process: q(z_t = i | x = j) = alpha_t [i = j] + (1 - alpha_t) / K.

- ``"x_hat"``: what a model trained with the uniform NELBO outputs (Duo, UDLM), the leave-one-out
  law x_hat = p(x^l | z_t^{-l}) that the samplers' posterior formula expects (SPEC §5).
- ``"posterior"``: what a model trained with cross-entropy on x from z_t outputs (the usual
  recipe of production uniform-state models), p(x^l | z_t), which also reads the token z_t^l.

Bayes on the one token that differs (SPEC §11)::

    p(x^l = j | z_t) ∝ x_hat_j · (1 + [j = z_t^l] · K alpha_t / (1 - alpha_t)),

so in log space the posterior is x_hat plus ``evidence_shift`` at the z_t entry, renormalised,
and x_hat is the posterior minus it. The shift is large (12.5 nats at K = 262,144, alpha_t =
0.5): feeding a posterior to a sampler built for x_hat over-trusts every noisy token. It is
computed from sigma = -log alpha_t, log1p(K alpha / (1 - alpha)) = log(1 - alpha + K alpha) -
log(1 - alpha) with 1 - alpha = -expm1(-sigma), which keeps its precision as alpha_t -> 1.

The masked process needs no conversion: on a masked position both laws are the same (a mask
carries no evidence) and on a clean one both are the point mass.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["PARAMETERIZATIONS", "Parameterization", "evidence_shift", "posterior_from_x_hat",
           "x_hat_from_posterior"]  # fmt: skip

Parameterization = Literal["x_hat", "posterior"]
PARAMETERIZATIONS: tuple[str, ...] = ("x_hat", "posterior")


def evidence_shift(sigma: Tensor, vocab_size: int) -> Tensor:
    """log1p(K alpha / (1 - alpha)) at alpha = exp(-sigma), elementwise, in sigma's dtype.

    sigma > 0 (a clean token, sigma = 0, is pure evidence: the shift is +inf there and the
    posterior is its point mass)."""
    one_minus_alpha = -torch.expm1(-sigma)
    return torch.log(one_minus_alpha + vocab_size * torch.exp(-sigma)) - torch.log(one_minus_alpha)


def _shift_at_z(logits: Tensor, z_t: Tensor, sigma: Tensor, vocab_size: int, sign: float) -> Tensor:
    if sigma.dim() == 1:  # one level per sequence -> (B, 1)
        sigma = sigma.unsqueeze(-1)
    shift = evidence_shift(sigma.to(logits.dtype), vocab_size).expand(z_t.shape)
    moved = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    moved = moved.scatter_add(-1, z_t.unsqueeze(-1), (sign * shift).unsqueeze(-1).to(moved.dtype))
    return torch.log_softmax(moved, dim=-1)


def posterior_from_x_hat(
    x_hat_logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    sigma: Tensor,
    vocab_size: int,
) -> Float[Tensor, "b l k"]:
    """log p(x^l | z_t) (B, L, K) from x_hat logits (B, L, K): add ``evidence_shift`` at the
    z_t entry and renormalise. ``sigma`` = -log alpha_t, (B,) or per token (B, L), > 0."""
    return _shift_at_z(x_hat_logits, z_t, sigma, vocab_size, 1.0)


def x_hat_from_posterior(
    posterior_logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    sigma: Tensor,
    vocab_size: int,
) -> Float[Tensor, "b l k"]:
    """log x_hat (B, L, K) from posterior logits (B, L, K): subtract ``evidence_shift`` at the
    z_t entry and renormalise (the inverse of ``posterior_from_x_hat``). Keep sigma away from 0
    (t >= t_min): there the posterior is nearly the point mass at z_t and x_hat's other entries
    are recovered from its tiny remainder."""
    return _shift_at_z(posterior_logits, z_t, sigma, vocab_size, -1.0)
