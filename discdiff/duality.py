"""The duality of Duo: argmax turns Gaussian diffusion into uniform-state diffusion (Concepts §2).

Notation (Concepts §1-2): K vocabulary size, M = K - 1; alpha_tilde the Gaussian signal level of
w_t = alpha_tilde x + sqrt(1 - alpha_tilde^2) eps, nu = alpha_tilde / sqrt(1 - alpha_tilde^2) its
signal-to-noise ratio; phi, Phi the standard normal pdf and cdf. z_t = argmax w_t has the
uniform-state marginal with

    alpha = T(alpha_tilde) = (K P - 1) / (K - 1),   P(nu) = int phi(z - nu) Phi(z)^M dz.

How T is computed. P is the probability that nu + eps_x beats Y = max of the M other noise
coordinates, so P(nu) = E[Phi(nu - Y)] with Y of density f_M(y) = M phi(y) Phi(y)^(M-1) (the
same integral as above after conditioning on Y instead of eps_x). We tabulate the complement

    R(nu) = 1 - T(nu) = (K / (K - 1)) int f_M(y) Phi(y - nu) dy,

which keeps full relative precision where T is close to 1 (that is where d nu / d alpha_tilde is
large, so errors there would be amplified), together with its exact nu-derivatives

    R^(n+1)(nu) = -(K / (K - 1)) int f_M(y) He_n(y - nu) phi(y - nu) dy,   n = 0, 1, 2,

(He_n the probabilists' Hermite polynomials: differentiating phi(y - nu) n times in nu). f_M is
entire and decays doubly exponentially on the left and like phi on the right, so the trapezoid
rule on a finite window converges geometrically: a 0.01 step gives about 1e-15. The table holds
R, R', R'', R''' on a uniform nu grid of step 1/16 over [0, 16] (beyond 16,
1 - T <= K Phi(-16 / sqrt 2) ~ 6e-30 K, so T = 1 there); between nodes R is the degree-7 Hermite
interpolant. Its values are accurate to ~1e-13 and its derivative to ~1e-12 of the largest
dT/d alpha_tilde (``python -m benchmarks.bench_duality`` measures both against adaptive
quadrature), and ``derivative`` returns the exact derivative of that interpolant, so autograd
through T and ``derivative`` agree to rounding. Building the table costs a few milliseconds
per K; it is cached per K, and evaluation is a gather plus a Horner scheme, with no quadrature
per call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff import config
from discdiff.schedules import GammaSchedule
from discdiff.typing import check_range, check_vocab_size, typechecked

__all__ = ["AlphaWindow", "DualSchedule", "GaussianArgmaxTransform", "signal_to_noise"]

_NU_MAX = 16.0  # T = 1 beyond: 1 - T(16) <= K Phi(-16 / sqrt 2) ~ 6e-30 K
_CELLS_PER_UNIT = 16  # nu grid step 1/16: a power of two, so nu * 16 is exact
_N_CELLS = int(_NU_MAX * _CELLS_PER_UNIT)
_QUAD_STEP = 0.01  # trapezoid step in y; 0.02 already agrees with 0.01 to ~1e-15
_INVERSE_STEPS = 48  # most Newton steps; bisection alone would reach 2^-48 of a cell
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@functools.lru_cache(maxsize=4)
def _hermite_inverse(order: int) -> Tensor:
    """Map [f(0), f'(0), ..., f^(m)(0), f(1), ..., f^(m)(1)] to monomial coefficients on [0, 1].

    Returns the inverse of the (2m + 2) x (2m + 2) confluent Vandermonde matrix, float64.
    """
    n = 2 * order + 2
    a = torch.zeros(n, n, dtype=torch.float64)
    for j in range(order + 1):
        a[j, j] = math.factorial(j)  # d^j/ds^j s^k at s = 0
        for k in range(j, n):  # d^j/ds^j s^k at s = 1
            a[order + 1 + j, k] = math.factorial(k) / math.factorial(k - j)
    return torch.linalg.inv(a)


def _y_quadrature(vocab_size: int) -> tuple[Tensor, Tensor]:
    """Trapezoid nodes y (n,) and weights (n,) for expectations under f_M, M = K - 1."""
    m = vocab_size - 1
    f64 = torch.float64
    # Window: P(Y < lo) = Phi(lo)^M = e^-40 and P(Y > hi) <= M (1 - Phi(hi)) = 1e-20.
    lo = float(torch.special.ndtri(torch.tensor(math.exp(-40.0 / m), dtype=f64)))
    hi = -float(torch.special.ndtri(torch.tensor(1e-20 / m, dtype=f64)))
    n = math.ceil((hi - lo) / _QUAD_STEP)
    y = torch.linspace(lo, hi, n + 1, dtype=f64)
    # log-space: Phi(y)^(M-1) from a rounded Phi(y) near 1 would lose ~M ulps of accuracy.
    log_f = math.log(m) - 0.5 * y * y - _LOG_SQRT_2PI + (m - 1) * torch.special.log_ndtr(y)
    return y, torch.exp(log_f) * ((hi - lo) / n)


@functools.lru_cache(maxsize=64)
def _build_table(vocab_size: int) -> tuple[Tensor, Tensor]:
    """Septic Hermite table of R = 1 - T in nu, float64 on the CPU.

    Returns ``(coef, nodes)``: coef (N, 8) monomial coefficients of R on cell i in the local
    variable s = 16 nu - i in [0, 1]; nodes (N + 1,) the values R(i / 16), from 1 down to 0.
    """
    y, w = _y_quadrature(vocab_size)
    nu = torch.arange(_N_CELLS + 1, dtype=torch.float64) / _CELLS_PER_UNIT
    u = y[None, :] - nu[:, None]  # (N + 1, n)
    pdf = torch.exp(-0.5 * u * u - _LOG_SQRT_2PI)
    c = vocab_size / (vocab_size - 1)
    # r is a positive-weighted sum of Phi(y - nu), each decreasing in nu: monotone nodes.
    r = c * (torch.special.ndtr(u) @ w)
    r1 = -c * (pdf @ w)
    r2 = -c * ((u * pdf) @ w)
    r3 = -c * (((u * u - 1) * pdf) @ w)
    data = torch.stack([r, r1, r2, r3], dim=1)
    # Exact ends: T(0) = 0 by symmetry (P = 1/K); at nu = 16 everything is below ~6e-30 K.
    data[0, 0] = 1.0
    data[-1] = 0.0
    h = 1.0 / _CELLS_PER_UNIT
    data = data * torch.tensor([1.0, h, h * h, h**3], dtype=torch.float64)  # d/ds = h d/dnu
    coef = torch.cat([data[:-1], data[1:]], dim=1) @ _hermite_inverse(3).T
    return coef.contiguous(), data[:, 0].clone()


def _horner(coef: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """p(s) and dp/ds for per-element coefficients coef (..., 8) at s (...)."""
    p = coef[..., 7]
    dp = 7 * coef[..., 7]
    for k in range(6, -1, -1):
        p = p * s + coef[..., k]
        if k > 0:
            dp = dp * s + k * coef[..., k]
    return p, dp


class _ApplyTransform(torch.autograd.Function):
    """T with a backward that multiplies by ``transform.derivative`` (exact, not autograd's)."""

    @staticmethod
    def forward(ctx: Any, alpha_tilde: Tensor, transform: GaussianArgmaxTransform) -> Tensor:
        ctx.save_for_backward(alpha_tilde)
        ctx.transform = transform
        return transform._value(alpha_tilde)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (alpha_tilde,) = ctx.saved_tensors
        return grad * ctx.transform._slope(alpha_tilde).to(grad.dtype), None


class GaussianArgmaxTransform:
    """alpha = T(alpha_tilde): the uniform-state signal level of argmax of a Gaussian latent.

    ``GaussianArgmaxTransform(vocab_size=K)`` works for any integer K >= 2 (checked to 1e9);
    the table for K is built once (a few ms) and shared by every instance with that K. All
    methods take tensors of any shape, dtype and device, compute in float64 and return the
    input's shape, dtype and device. T is increasing with T(0) = 0 and T(1) = 1.

    Usage::

        T = GaussianArgmaxTransform(vocab_size=50257)
        alpha = T(alpha_tilde)           # differentiable; d alpha / d alpha_tilde is exact
        slope = T.derivative(alpha_tilde)
        alpha_tilde = T.inverse(alpha)
    """

    def __init__(self, vocab_size: int) -> None:
        check_vocab_size(vocab_size)
        self._vocab_size = vocab_size
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __repr__(self) -> str:
        return f"GaussianArgmaxTransform(vocab_size={self._vocab_size})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GaussianArgmaxTransform):
            return NotImplemented
        return self._vocab_size == other._vocab_size

    def __hash__(self) -> int:
        return hash((GaussianArgmaxTransform, self._vocab_size))

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "GaussianArgmaxTransform", "vocab_size": K}`` (see ``discdiff.config``)."""
        return {"type": "GaussianArgmaxTransform", "vocab_size": self._vocab_size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GaussianArgmaxTransform:
        """The transform ``to_dict`` describes."""
        return cls(**config.check_keys(cls, data, {"vocab_size"}))

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        # One copy per device, so calls on an accelerator do not re-upload the table each time.
        if device not in self._tables:
            coef, nodes = _build_table(self._vocab_size)
            self._tables[device] = (coef.to(device), nodes.to(device))
        return self._tables[device]

    @typechecked
    def __call__(self, alpha_tilde: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """alpha = T(alpha_tilde), alpha_tilde in [0, 1]; differentiable with the exact slope."""
        check_range(alpha_tilde, "alpha_tilde", 0.0, 1.0)
        return _ApplyTransform.apply(alpha_tilde, self)

    @typechecked
    def derivative(self, alpha_tilde: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """dT/d alpha_tilde = T_nu(nu) (1 - alpha_tilde^2)^(-3/2); 0 at alpha_tilde = 1."""
        check_range(alpha_tilde, "alpha_tilde", 0.0, 1.0)
        return self._slope(alpha_tilde.detach())

    @typechecked
    def inverse(self, alpha: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """alpha_tilde with T(alpha_tilde) = alpha (not differentiable).

        T is flat to rounding near alpha_tilde = 1, so there the answer is one of many preimages;
        T(inverse(alpha)) = alpha holds to ~1e-15 everywhere, and inverse(1) = 1.
        """
        check_range(alpha, "alpha", 0.0, 1.0)
        a = alpha.detach().to(torch.float64).clamp(0.0, 1.0)
        coef, nodes = self._table(a.device)
        target = 1.0 - a  # solve R(nu) = 1 - alpha: R is stored with full relative precision
        # First node with R <= target; the root lies in the cell just before it.
        j = torch.searchsorted(-nodes, -target.reshape(-1).contiguous()).reshape(a.shape)
        i = (j - 1).clamp(0, _N_CELLS - 1)
        cell = coef[i]
        r_hi, r_lo = nodes[i], nodes[i + 1]
        gap = r_hi - r_lo
        s = torch.where(gap > 0, (r_hi - target) / gap.clamp_min(1e-300), 0.0).clamp(0.0, 1.0)
        lo, hi = torch.zeros_like(s), torch.ones_like(s)
        for step in range(_INVERSE_STEPS):
            p, dp = _horner(cell, s)
            g = p - target  # decreasing in s
            lo = torch.where(g > 0, s, lo)
            hi = torch.where(g < 0, s, hi)
            newton = s - g / torch.where(dp < 0, dp, -1.0)
            inside = (dp < 0) & (newton > lo) & (newton < hi)
            s_next = torch.where(g == 0, s, torch.where(inside, newton, 0.5 * (lo + hi)))
            # Newton usually settles in ~5 steps: check now and then (each check syncs).
            done = step % 4 == 3 and bool(((s_next - s).abs() <= 1e-15).all())
            s = s_next
            if done:
                break
        nu = (i + s) / _CELLS_PER_UNIT
        alpha_tilde = nu * torch.rsqrt(1.0 + nu * nu)
        alpha_tilde = torch.where(a >= 1.0, 1.0, torch.where(a <= 0.0, 0.0, alpha_tilde))
        return alpha_tilde.to(alpha.dtype)

    def _locate(self, alpha_tilde: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha_tilde, nu, cell index, s) in float64; nu is clamped to the table's end."""
        a = alpha_tilde.to(torch.float64).clamp(0.0, 1.0)
        nu = signal_to_noise(a).clamp(max=_NU_MAX)  # a = 1 gives inf -> 16
        x = nu * _CELLS_PER_UNIT
        i = x.floor().clamp(max=_N_CELLS - 1)
        return a, nu, i.long(), x - i

    def _value(self, alpha_tilde: Tensor) -> Tensor:
        _, _, i, s = self._locate(alpha_tilde)
        coef, nodes = self._table(alpha_tilde.device)
        r, _ = _horner(coef[i], s)
        # Clamp into the cell's node values: the interpolant is monotone there, and this makes
        # it monotone across cell boundaries too, where Horner's rounding could differ by 1 ulp.
        r = torch.minimum(torch.maximum(r, nodes[i + 1]), nodes[i])
        return (1.0 - r).to(alpha_tilde.dtype)

    def _slope(self, alpha_tilde: Tensor) -> Tensor:
        a, nu, i, s = self._locate(alpha_tilde)
        coef, _ = self._table(alpha_tilde.device)
        _, dr_ds = _horner(coef[i], s)
        dnu_da = torch.pow(1.0 - a * a, -1.5)  # inf at a = 1; masked below
        slope = -dr_ds * _CELLS_PER_UNIT * dnu_da
        return torch.where(nu < _NU_MAX, slope, 0.0).to(alpha_tilde.dtype)


@dataclass(frozen=True)
class DualSchedule:
    """The discrete schedule induced by a Gaussian gamma-schedule: alpha_t = T(alpha_tilde_t).

    Satisfies ``discdiff.schedules.Schedule``. ``dalpha_dt`` is the exact chain rule
    T'(alpha_tilde_t) d alpha_tilde_t / dt (the reference code used a finite difference).
    """

    gamma: GammaSchedule
    transform: GaussianArgmaxTransform

    def alpha(self, t: Tensor) -> Tensor:
        return self.transform(self.gamma.alpha_tilde(t))

    def dalpha_dt(self, t: Tensor) -> Tensor:
        slope = self.transform.derivative(self.gamma.alpha_tilde(t))
        return slope * self.gamma.dalpha_tilde_dt(t)

    def inverse(self, alpha: Tensor) -> Tensor:
        """t with alpha_t = alpha (values outside the gamma window map outside [0, 1])."""
        return self.gamma.inverse(self.transform.inverse(alpha))

    def alpha_tilde(self, t: Tensor) -> Tensor:
        return self.gamma.alpha_tilde(t)

    def sigma_tilde(self, t: Tensor) -> Tensor:
        return self.gamma.sigma_tilde(t)

    def dalpha_tilde_dt(self, t: Tensor) -> Tensor:
        return self.gamma.dalpha_tilde_dt(t)

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "DualSchedule", "gamma": {...}, "transform": {...}}``."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DualSchedule:
        """The schedule ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)


def signal_to_noise(alpha_tilde: Tensor) -> Tensor:
    """nu = alpha_tilde / sqrt(1 - alpha_tilde^2) in float64 (+inf at alpha_tilde = 1).

    1 - a*a (not (1 - a)(1 + a)): every operation is monotone and correctly rounded, so nu, and
    T through it, never decrease in alpha_tilde, even at the rounding level.
    """
    a = alpha_tilde.to(torch.float64).clamp(0.0, 1.0)
    return a / torch.sqrt(1.0 - a * a)


@dataclass(frozen=True)
class AlphaWindow:
    """A window of discrete signal levels, alpha_start at t = 0 down to alpha_end at t = 1,
    turned into the Gaussian gamma-window that gives it for a vocabulary (``for_vocab``).

    The gamma-windows of the paper are tuned for K = 50257; the same gamma covers very different
    alpha at small K (gamma in [-3.55, -1.85] spans alpha in [0.049, 0.945] at K = 50257 but
    only [0.53, 1.0] at K = 85). A window in alpha means the same thing for any K.
    ``AlphaWindow.from_gamma(g_min, g_max, vocab_size)`` is the alpha range a gamma-window
    covers at ``vocab_size``: at that K, ``for_vocab`` gives the gamma-window back.
    """

    alpha_start: float
    alpha_end: float

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_end < self.alpha_start < 1.0:
            raise ValueError(
                "need 0 < alpha_end < alpha_start < 1 (signal decreases from t = 0 to t = 1), "
                f"got alpha_start={self.alpha_start}, alpha_end={self.alpha_end}"
            )

    @staticmethod
    def from_gamma(gamma_min: float, gamma_max: float, vocab_size: int) -> AlphaWindow:
        """The alpha range that gamma in [gamma_min, gamma_max] covers at ``vocab_size``."""
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        alpha_tilde = GammaSchedule(gamma_min, gamma_max).alpha_tilde(t)
        alpha = GaussianArgmaxTransform(vocab_size)(alpha_tilde)
        return AlphaWindow(float(alpha[0]), float(alpha[1]))

    def for_vocab(self, vocab_size: int) -> GammaSchedule:
        """The gamma-window with T(alpha_tilde(0)) = alpha_start, T(alpha_tilde(1)) = alpha_end."""
        alpha = torch.tensor([self.alpha_start, self.alpha_end], dtype=torch.float64)
        a2 = GaussianArgmaxTransform(vocab_size).inverse(alpha).square()
        gamma = torch.log1p(-a2) - torch.log(a2)  # alpha_tilde^2 = sigmoid(-gamma)
        return GammaSchedule(float(gamma[0]), float(gamma[1]))

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "AlphaWindow", "alpha_start": ..., "alpha_end": ...}``."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlphaWindow:
        """The window ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)
