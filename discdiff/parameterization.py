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

A denoiser declares what its logits mean with an attribute ``parameterization`` ("x_hat" when it
has none; ``discdiff.adapters.as_denoiser`` sets it). ``parameterization_of`` reads it, and
``convert_logits`` is what the uniform samplers, the uniform NELBO and DCD call where they need
x_hat (and the cross-entropy objective where it needs the posterior).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["PARAMETERIZATIONS", "Parameterization", "check_parameterization", "convert_logits",
           "evidence_shift", "parameterization_of", "posterior_from_x_hat",
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


def check_parameterization(value: Any, name: str = "parameterization") -> Parameterization:
    """``value`` if it is "x_hat" or "posterior", else a ValueError naming ``name``."""
    if value not in PARAMETERIZATIONS:
        raise ValueError(
            f"{name} must be 'x_hat' (logits trained with the uniform NELBO: Duo, UDLM) or "
            f"'posterior' (logits trained with cross-entropy on x_0 from z_t), got {value!r}"
        )
    return value


def parameterization_of(denoiser: Any) -> Parameterization:
    """What ``denoiser``'s logits mean: its ``parameterization`` attribute (through a
    ``torch.compile`` or DDP / FSDP wrapper too), "x_hat" when it declares none."""
    for obj in (denoiser, getattr(denoiser, "_orig_mod", None), getattr(denoiser, "module", None)):
        value = getattr(obj, "parameterization", None) if obj is not None else None
        if value is not None:
            return check_parameterization(value, f"{type(obj).__name__}.parameterization")
    return "x_hat"


def convert_logits(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    sigma: Tensor,
    *,
    source: Parameterization,
    target: Parameterization,
) -> Float[Tensor, "b l k"]:
    """Logits of ``source`` meaning as logits of ``target`` meaning (B, L, K), exactly (SPEC §11).

    ``logits`` themselves when the two agree (no copy). ``sigma`` = -log alpha_t, (B,) or per
    token (B, L). At a clean position (sigma = 0: a prompt, a previous block) the posterior is
    the point mass at z_t whatever x_hat is, so nothing can be converted there: those rows are
    returned as they are (the callers hold such positions fixed and give them no loss).
    """
    if source == target:
        return logits
    k = logits.shape[-1]
    clean = sigma == 0
    # Any positive level at the clean positions keeps the shift finite there; their rows are
    # then replaced by the input rows below.
    safe = torch.where(clean, torch.ones_like(sigma), sigma)
    convert = posterior_from_x_hat if target == "posterior" else x_hat_from_posterior
    moved = convert(logits, z_t, safe, k)
    # No branch on clean.any(): that would cost a host sync per call on an accelerator.
    held = clean if clean.dim() == 2 else clean.unsqueeze(-1).expand(z_t.shape)
    return torch.where(held.unsqueeze(-1), logits.to(moved.dtype), moved)
