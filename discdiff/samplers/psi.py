"""The Ψ corrector of the uniform-state sampler (Concepts §5): the step's law is

    kappa q(z_s | z_t, x_hat) + (1 - kappa) (alpha_s q0 + (1 - alpha_s) / K),

the ancestral posterior mixed with the denoising posterior q0 = q(z_0 | z_t, x_hat) re-noised to
level s. kappa = 1 (or None) is ancestral sampling; ``uniform_mixture`` writes both laws as the
three-part mixture a step draws from (stay at z_t, draw from x_hat, draw uniformly).

``Kappa`` is what the samplers accept: a number in [0, 1] or a schedule kappa(t, s)
(``ConstantKappa``, ``CappedKappa`` or any callable); ``kappa_at`` evaluates it on a step and
checks the value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from discdiff.samplers import levels as lv
from discdiff.typing import as_float

__all__ = ["Kappa", "check_kappa", "kappa_at", "uniform_mixture"]

Kappa = float | Callable[[float, float], float]
"""The Ψ weight of a run: a number in [0, 1], or a schedule kappa(t, s) -> [0, 1]."""


def check_kappa(kappa: object) -> Kappa | None:
    """``kappa`` as a float in [0, 1], or the callable itself, or None; else ValueError."""
    if kappa is None or callable(kappa):
        return kappa  # type: ignore[return-value]
    value = as_float(kappa, "kappa")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {value}")
    return value


def kappa_at(kappa: Kappa, t: float, s: float) -> float:
    """kappa of the step t -> s: the number, or the schedule's value, checked to lie in [0, 1]."""
    value = as_float(kappa(t, s), "kappa(t, s)") if callable(kappa) else kappa
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"kappa(t={t:.6g}, s={s:.6g}) = {value} is outside [0, 1]")
    return value


def uniform_mixture(
    x_zt: Tensor,
    alpha_s: float | Tensor,
    alpha_t: float | Tensor,
    kappa: float | Tensor | None,
    k: int,
) -> tuple[Tensor, Tensor]:
    """(p_stay, p_xhat) of one uniform step, per row; the rest of the mass draws uniformly.

    ``x_zt`` is x_hat[z_t] (float64, per row). The ancestral posterior q(z_s | z_t, x_hat) is,
    with alpha_ts alpha_s = alpha_t and D = K alpha_t x_hat[i] + 1 - alpha_t (K q(z_t | x_hat)),

        D q(z_s = j) = (K alpha_t x_hat_i + alpha_ts - alpha_t) [j = i]     stay at z_t
                       + (alpha_s - alpha_t) x_hat_j                        draw from x_hat
                       + (1 - alpha_ts)(1 - alpha_s) / K                    draw uniformly,

    all three >= 0 for alpha_s >= alpha_t. The Ψ step mixes it, with weight 1 - kappa, with the
    denoising posterior re-noised to level s, alpha_s q0 + (1 - alpha_s) / K, where
    D q0(j) = K alpha_t x_hat_i [j = i] + (1 - alpha_t) x_hat_j: the same three draws, so

        p_stay = kappa w_stay / D + (1 - kappa) alpha_s K alpha_t x_hat_i / D
        p_xhat = kappa w_xhat / D + (1 - kappa) alpha_s (1 - alpha_t) / D.

    A z_t of probability zero (D = 0, only at alpha_t = 1) stays put.
    """
    a_ts = lv.ratio(alpha_t, alpha_s)
    stay_post = k * alpha_t * x_zt + a_ts - alpha_t
    total = k * alpha_t * x_zt + 1 - alpha_t
    possible = total > 0
    d = torch.where(possible, total, 1.0)
    p_stay = torch.where(possible, stay_post / d, 1.0)
    p_xhat = torch.where(possible, (alpha_s - alpha_t) / d, 0.0)
    if kappa is not None:
        q0_stay = torch.where(possible, k * alpha_t * x_zt / d, 1.0)
        q0_xhat = torch.where(possible, (1 - alpha_t) / d, 0.0)
        p_stay = kappa * p_stay + (1 - kappa) * alpha_s * q0_stay
        p_xhat = kappa * p_xhat + (1 - kappa) * alpha_s * q0_xhat
    return p_stay, p_xhat
