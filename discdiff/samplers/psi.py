"""The Ψ corrector of the uniform-state sampler (Concepts §5): the step's law is

    kappa q(z_s | z_t, x_hat) + (1 - kappa) (alpha_s q0 + (1 - alpha_s) / K),

the ancestral posterior mixed with the denoising posterior q0 = q(z_0 | z_t, x_hat) re-noised to
level s. kappa = 1 (or None) is ancestral sampling; ``uniform_mixture`` (one formula, in
``discdiff.numerics``, shared by the PyTorch step and the kernels' ``mixture_weights``) writes
both laws as the three-part mixture a step draws from (stay at z_t, draw from x_hat, draw
uniformly).

``Kappa`` is what the samplers accept: a number in [0, 1] or a schedule kappa(t, s)
(``ConstantKappa``, ``CappedKappa`` or any callable); ``kappa_at`` evaluates it on a step and
checks the value.
"""

from __future__ import annotations

from collections.abc import Callable

from discdiff.numerics import uniform_mixture
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
