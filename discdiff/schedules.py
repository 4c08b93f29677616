"""Noise schedules: the discrete signal level alpha_t and its exact time derivative.

Notation: t in [0, 1], t = 0 clean, t = 1 pure noise; alpha_t decreases from 1 towards 0 and
``dalpha_dt`` <= 0. Every schedule is a small frozen dataclass with three methods, so a user's
own schedule only needs the same three: ``alpha(t)``, ``dalpha_dt(t)`` and ``inverse(alpha)``.

The Gaussian schedule of Duo is separate: ``GammaSchedule`` gives the Gaussian signal level
alpha_tilde_t with alpha_tilde^2 = sigmoid(-gamma_t), gamma_t linear in t; the duality module
maps it to a discrete alpha_t through the transform T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from discdiff import config
from discdiff.typing import as_float

__all__ = [
    "CosineSchedule",
    "GammaSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "Schedule",
]


def _check_eps(eps: Any) -> None:
    value = as_float(eps, "eps")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"eps must lie in [0, 1) (alpha_1 = eps), got {eps!r}")


def _check_sigmas(sigma_min: Any, sigma_max: Any, *, positive: bool) -> None:
    lo, hi = as_float(sigma_min, "sigma_min"), as_float(sigma_max, "sigma_max")
    if not (lo > 0 if positive else lo >= 0) or not lo < hi < math.inf:
        bound = "0 <" if positive else "0 <="
        raise ValueError(
            f"need {bound} sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, "
            f"sigma_max={sigma_max!r}"
        )


@runtime_checkable
class Schedule(Protocol):
    """alpha_t = P(a token is still clean at time t), with its exact derivative and inverse."""

    def alpha(self, t: Tensor) -> Tensor: ...

    def dalpha_dt(self, t: Tensor) -> Tensor: ...

    def inverse(self, alpha: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t: the total noise sigma_t = -log alpha_t grows log-linearly.

    The default of MDLM and Duo's discrete phase; ``eps`` keeps alpha_1 = eps > 0.
    """

    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def dalpha_dt(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1 - self.eps))

    def inverse(self, alpha: Tensor) -> Tensor:
        return (1 - alpha) / (1 - self.eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings ``{"type": "LogLinearSchedule", ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogLinearSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class CosineSchedule:
    """alpha_t = eps + (1 - eps) cos(pi t / 2)."""

    eps: float = 1e-3

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1 - self.eps) * torch.cos(0.5 * math.pi * t)

    def dalpha_dt(self, t: Tensor) -> Tensor:
        return -(1 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def inverse(self, alpha: Tensor) -> Tensor:
        c = ((alpha - self.eps) / (1 - self.eps)).clamp(-1.0, 1.0)
        return torch.arccos(c) * (2 / math.pi)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings ``{"type": "CosineSchedule", ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CosineSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class LinearSchedule:
    """sigma_t = sigma_min + t (sigma_max - sigma_min), alpha_t = exp(-sigma_t)."""

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def __post_init__(self) -> None:
        _check_sigmas(self.sigma_min, self.sigma_max, positive=False)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-(self.sigma_min + t * (self.sigma_max - self.sigma_min)))

    def dalpha_dt(self, t: Tensor) -> Tensor:
        return -(self.sigma_max - self.sigma_min) * self.alpha(t)

    def inverse(self, alpha: Tensor) -> Tensor:
        return (-torch.log(alpha) - self.sigma_min) / (self.sigma_max - self.sigma_min)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings ``{"type": "LinearSchedule", ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class GeometricSchedule:
    """sigma_t = sigma_min^(1-t) sigma_max^t, alpha_t = exp(-sigma_t)."""

    sigma_min: float = 1e-3
    sigma_max: float = 20.0

    def __post_init__(self) -> None:
        _check_sigmas(self.sigma_min, self.sigma_max, positive=True)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-self._sigma(t))

    def dalpha_dt(self, t: Tensor) -> Tensor:
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        return -self._sigma(t) * log_ratio * self.alpha(t)

    def inverse(self, alpha: Tensor) -> Tensor:
        sigma = -torch.log(alpha)
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings ``{"type": "GeometricSchedule", ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeometricSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class GammaSchedule:
    """The Gaussian schedule: alpha_tilde_t^2 = sigmoid(-gamma_t), gamma_t linear in t.

    Variance preserving: sigma_tilde_t^2 = 1 - alpha_tilde_t^2 = sigmoid(gamma_t); the log-SNR is
    -gamma_t. Duo's curriculum restricts gamma to a window (OWT: [-3.55, -1.85]).
    """

    gamma_min: float = -3.55
    gamma_max: float = -1.85

    def __post_init__(self) -> None:
        lo, hi = as_float(self.gamma_min, "gamma_min"), as_float(self.gamma_max, "gamma_max")
        if not -math.inf < lo < hi < math.inf:
            raise ValueError(
                f"gamma_min < gamma_max must be finite, got gamma_min={self.gamma_min}, "
                f"gamma_max={self.gamma_max}"
            )

    def gamma(self, t: Tensor) -> Tensor:
        return self.gamma_min + t * (self.gamma_max - self.gamma_min)

    def alpha_tilde(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.gamma(t)).sqrt()

    def sigma_tilde(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.gamma(t)).sqrt()

    def dalpha_tilde_dt(self, t: Tensor) -> Tensor:
        # d/dt sqrt(sigmoid(-gamma)) = -gamma' * sigmoid(-gamma) sigmoid(gamma) / (2 alpha_tilde)
        #                            = -gamma' * alpha_tilde * sigma_tilde^2 / 2
        g = self.gamma(t)
        return -(self.gamma_max - self.gamma_min) * torch.sigmoid(-g).sqrt() * torch.sigmoid(g) / 2

    def inverse(self, alpha_tilde: Tensor) -> Tensor:
        """t such that alpha_tilde_t = alpha_tilde (unclamped: values outside the window map
        outside [0, 1])."""
        a2 = alpha_tilde.square()
        gamma = torch.log1p(-a2) - torch.log(a2)  # -logit(a2)
        return (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings ``{"type": "GammaSchedule", ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GammaSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)
