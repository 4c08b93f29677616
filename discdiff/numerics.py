"""Per-row formulas shared by the PyTorch paths and the Triton kernels (Concepts §3, §5).

This module sits at the bottom of the import graph (it imports only torch): ``discdiff.losses``,
``discdiff.samplers`` and ``discdiff.kernels`` all read their per-row closed forms from here, so
that the two backends of an operation end in the same arithmetic.

    g_small(z)                    z - log1p(z) for |z| <= 0.1, by a series
    series_split(alpha, k)        β = Kα / (1 - α) per row, and where the series form is used
    row_terms(...)                the uniform NELBO's D per row from its O(K) reductions
    ratio(a_t, a_s)               α_ts = α_t / α_s with 0 / 0 = 1
    uniform_mixture(...)          (p_stay, p_xhat) of one uniform / Ψ reverse step
    mixture_weights(...)          the same step's three weights (stay, draw from x̂, uniform)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BETA_SERIES",
    "g_small",
    "mixture_weights",
    "ratio",
    "row_terms",
    "series_split",
    "uniform_mixture",
]

BETA_SERIES = 0.1
"""Below this β = Kα/(1-α) the bracket of the uniform NELBO is O(β²) while its pieces are O(β):
those rows use a form where the first order cancels analytically (see ``row_terms``)."""
BETA_MAX = 1e30
"""β is +inf at α = 1, where its terms carry weight zero; it is clamped here to stay finite."""


def g_small(z: Tensor) -> Tensor:
    """z - log1p(z) to rounding for |z| <= 0.1 (the naive difference loses all digits).

    With s = z / (2 + z), log1p(z) = 2 atanh(s) = 2 (s + s³/3 + s⁵/5 + ...) and z = 2s / (1 - s),
    so z - log1p(z) = 2s² / (1 - s) - 2s³ (1/3 + s²/5 + ...); |s| <= 0.053 and the series is cut
    where its next term is below float64 rounding relative to the result.
    """
    s = z / (2 + z)
    s2 = s * s
    poly = 1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 / 13))))
    return 2 * s2 / (1 - s) - 2 * s * s2 * poly


def series_split(alpha: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """β = Kα / (1 - α) per row (+inf at α = 1 clamped) and where the series form is used."""
    beta = (k * alpha / (1 - alpha)).clamp(max=BETA_MAX)
    return beta, beta < BETA_SERIES


def _log_ratio(v: Tensor, xbar_x: Tensor, a_: Tensor, p: Tensor, one_m_p: Tensor) -> Tensor:
    """log(v / x̄_x) = log((A p + c) / (A + c)), from whichever of p, 1 - p is accurate."""
    near_one = torch.log1p(-a_ * one_m_p / xbar_x)
    return torch.where(p > 0.5, near_one, torch.log(v / xbar_x))


def _series_terms(
    p_i: Tensor, p_x: Tensor, one_m_pi: Tensor, one_m_px: Tensor, g_sum: Tensor, same: Tensor,
    bs: Tensor, kf: float,
) -> Tensor:  # fmt: skip
    """D of the rows with β < 0.1 (``bs`` = β there, 0 elsewhere): the O(β) parts cancelled."""
    u_i = 1 + bs * p_i
    g_b, g_bi, g_bx = g_small(bs), g_small(bs * p_i), g_small(bs * p_x)
    b2 = bs * bs
    s_same = (b2 * one_m_pi * (1 - kf * p_i) / u_i + g_sum - (kf - 1) * g_bi + (kf - 1) * g_b) / (
        1 + bs
    )
    s_diff = (
        (kf + bs) * b2 * p_i * p_i / u_i
        + b2 * one_m_px
        + g_sum
        + (1 + bs) * g_bx
        - (kf + bs - 1) * g_bi
        - (1 + bs) * g_b
    )
    return torch.where(same, s_same, s_diff)


def row_terms(
    p_i: Tensor, p_x: Tensor, rest: Tensor, t_sum: Tensor, g_sum: Tensor, same: Tensor,
    alpha: Tensor, k: int, *, series: bool = True,
) -> tuple[Tensor, tuple[Tensor, ...]]:  # fmt: skip
    """D per row of the uniform NELBO from the row's O(K) reductions, and the per-row values its
    gradient needs: (A, c, x̄_i, v_i, p_i, C). The derivation is in
    ``discdiff.losses.uniform.UniformNelboCore``'s docstring.

    Every input is (n,) in the accumulation dtype: p_i, p_x are x̂ at z_t and at x_0;
    rest = Σ_{j∉{i,x}} p_j; t_sum = Σ_{j∉{i,x}} log1p(β p_j); g_sum = Σ_{j∉{i,x}} g(β p_j),
    read only where β < 0.1; same: z_t == x_0; alpha: α_t. ``series=False`` skips the series
    form (only right when no row has β < 0.1). The PyTorch path and the Triton kernels'
    reductions both end here.
    """
    a_ = k * alpha  # A = Kα
    c_ = 1 - alpha  # c = 1 - α
    beta, small = series_split(alpha, k)
    one_m_pi = rest + torch.where(same, 0.0, p_x)
    one_m_px = rest + torch.where(same, 0.0, p_i)
    # Near one-hot, a rounded p_i (float32) disagrees with the accurate 1 - p_i by more than
    # the O((1 - p_i)²) loss: take p from its complement so that every term sees the same p.
    p_i = torch.where(p_i > 0.5, 1 - one_m_pi, p_i)
    p_x = torch.where(p_x > 0.5, 1 - one_m_px, p_x)
    xbar_x = a_ + c_
    xbar_i = torch.where(same, xbar_x, c_)
    v_i = a_ * p_i + c_
    v_x = a_ * p_x + c_
    kf = float(k)
    cc = torch.where(same, kf * a_ * one_m_pi, -kf * a_ * p_i) / (v_i * xbar_i)

    # Large β (the T form). Weight c/x̄_i is exactly 0 at α = 1, where T may be huge.
    w = c_ / xbar_i
    inner = t_sum - (kf - 1) * _log_ratio(v_i, xbar_x, a_, p_i, one_m_pi)
    d_same = cc - torch.where(w > 0, w * inner, 0.0)
    d_diff = (
        cc
        - t_sum
        - (xbar_x / c_) * _log_ratio(v_x, xbar_x, a_, p_x, one_m_px)
        + (kf - 1 + beta) * torch.log1p(beta * p_i)
    )
    d = torch.where(same, d_same, d_diff)
    if series:
        bs = torch.where(small, beta, 0.0)
        d = torch.where(small, _series_terms(p_i, p_x, one_m_pi, one_m_px, g_sum, same, bs, kf), d)
    # z_t ≠ x_0 at α = 1 is impossible under q(z_t | x_0): the bound is +inf there.
    d = torch.where(~same & (c_ == 0), math.inf, d.clamp_min(0.0))
    return d, (a_, c_, xbar_i, v_i, p_i, cc)


def ratio(a_t: float | Tensor, a_s: float | Tensor) -> float | Tensor:
    """α_ts = α_t / α_s, with 0 / 0 = 1 (no time elapses between two pure-noise levels; any
    value gives the same law there since z_t is then uniform)."""
    if isinstance(a_t, float) and isinstance(a_s, float):
        return a_t / a_s if a_s > 0 else 1.0
    a_t, a_s = torch.as_tensor(a_t, dtype=torch.float64), torch.as_tensor(a_s, dtype=torch.float64)
    return torch.where(a_s > 0, a_t / torch.where(a_s > 0, a_s, 1.0), 1.0)


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

    A z_t of probability zero (D = 0, only at alpha_t = 1) stays put. The Triton step
    (``discdiff.kernels``) evaluates these weights inside its kernel, in float64.
    """
    a_ts = ratio(alpha_t, alpha_s)
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


def mixture_weights(
    p_i: Tensor, alpha_s: Tensor, alpha_t: Tensor, kappa: Tensor | None, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(stay, draw from x̂, draw uniformly) weights of a step from x̂[z_t] = p_i (float64 tensors
    broadcasting together): ``uniform_mixture``'s two and the rest, which sum to one."""
    stay, hat = uniform_mixture(p_i, alpha_s, alpha_t, kappa, k)
    return stay, hat, 1 - stay - hat
