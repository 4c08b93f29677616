"""Corrector schedules: the Ψ weight kappa(t, s) of the uniform sampler and the ReMDM remasking
probability rho(t, s) of the masked one, as small frozen dataclasses called with (t, s).

Both put back some noise on each step so that later steps can correct earlier choices; kappa = 1
and rho = 0 are plain ancestral sampling. A window t_off <= s < t <= t_on restricts the
correction to a stretch of time (ReMDM's "loop").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from discdiff.schedules import Schedule

__all__ = ["CappedKappa", "CappedRemask", "ConstantKappa", "RescaledRemask", "alpha_at"]


def _check_weight_and_window(name: str, value: float, t_on: float, t_off: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if not 0.0 <= t_off <= t_on <= 1.0:
        raise ValueError(f"need 0 <= t_off <= t_on <= 1, got t_off={t_off}, t_on={t_on}")


def _inside(t: float, s: float, t_on: float, t_off: float) -> bool:
    """Whether the step t -> s lies in the window t_off <= s < t <= t_on."""
    return t <= t_on and s >= t_off


def alpha_at(schedule: Schedule, t: float) -> float:
    """alpha at time t as a float, from the schedule in float64."""
    # t = 0 is clean by definition (alpha_0 = 1), whatever rounding the schedule has there.
    if t == 0.0:
        return 1.0
    return float(schedule.alpha(torch.tensor(t, dtype=torch.float64)))


class _Windowed:
    """A correction ``inside(t, s)`` for steps in the window t_off <= s < t <= t_on, and the
    plain ancestral value ``outside`` elsewhere; the field named by ``weight`` lies in [0, 1]."""

    outside: ClassVar[float]
    weight: ClassVar[str]
    label: ClassVar[str] = ""  # what error messages call the weight (default: its field name)
    t_on: float
    t_off: float

    def __post_init__(self) -> None:
        _check_weight_and_window(
            self.label or self.weight, getattr(self, self.weight), self.t_on, self.t_off
        )

    def __call__(self, t: float, s: float) -> float:
        return self.inside(t, s) if _inside(t, s, self.t_on, self.t_off) else self.outside

    def inside(self, t: float, s: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class ConstantKappa(_Windowed):
    """Ψ weight kappa(t, s) = ``value`` for steps inside the window t_off <= s < t <= t_on, and
    1 (plain ancestral) outside it.

    The Ψ step moves a fraction 1 - kappa of each step's mass from the posterior to the
    denoising posterior re-noised to level s: the analogue of ReMDM's "rescaled" schedule.
    Restricting it to a window mimics ReMDM's "loop" (correct only
    during a stretch of time)."""

    value: float
    t_on: float = 1.0
    t_off: float = 0.0
    outside: ClassVar[float] = 1.0
    weight: ClassVar[str] = "value"
    label: ClassVar[str] = "kappa"

    def inside(self, t: float, s: float) -> float:
        return self.value


@dataclass(frozen=True)
class CappedKappa(_Windowed):
    """Ψ weight that renoises at most ``eta_cap`` of the tokens per step (ReMDM's "max-capped").

    The Ψ mixture's extra noise is (1 - kappa)(1 - alpha_s); this picks it as
    min(eta_cap, 1 - alpha_s), i.e. kappa = 1 - min(eta_cap, 1 - alpha_s) / (1 - alpha_s)
    (kappa = 1 when alpha_s = 1), inside the window t_off <= s < t <= t_on, 1 outside."""

    schedule: Schedule
    eta_cap: float
    t_on: float = 1.0
    t_off: float = 0.0
    outside: ClassVar[float] = 1.0
    weight: ClassVar[str] = "eta_cap"

    def inside(self, t: float, s: float) -> float:
        room = 1.0 - alpha_at(self.schedule, s)
        if room <= 0.0:
            return 1.0
        return 1.0 - min(self.eta_cap, room) / room


def _remask_max(schedule: Schedule, t: float, s: float) -> float:
    a_t, a_s = alpha_at(schedule, t), alpha_at(schedule, s)
    return 1.0 if a_t <= 0 else min(1.0, (1.0 - a_s) / a_t)


@dataclass(frozen=True)
class CappedRemask(_Windowed):
    """ReMDM "max-capped" remasking: rho(t, s) = min(eta_cap, rho_max(t, s)) inside the
    window t_off <= s < t <= t_on, 0 outside; rho_max = min(1, (1 - alpha_s) / alpha_t)."""

    schedule: Schedule
    eta_cap: float
    t_on: float = 1.0
    t_off: float = 0.0
    outside: ClassVar[float] = 0.0
    weight: ClassVar[str] = "eta_cap"

    def inside(self, t: float, s: float) -> float:
        return min(self.eta_cap, _remask_max(self.schedule, t, s))


@dataclass(frozen=True)
class RescaledRemask(_Windowed):
    """ReMDM "rescaled" remasking: rho(t, s) = eta * rho_max(t, s) inside the window
    t_off <= s < t <= t_on, 0 outside."""

    schedule: Schedule
    eta: float
    t_on: float = 1.0
    t_off: float = 0.0
    outside: ClassVar[float] = 0.0
    weight: ClassVar[str] = "eta"

    def inside(self, t: float, s: float) -> float:
        return self.eta * _remask_max(self.schedule, t, s)
