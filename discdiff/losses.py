"""Per-token training losses, the terms that close the variational bound, and time sampling.

Notation (SPEC §3): K vocabulary size (read from the last axis of ``logits``), ``x_0`` the clean
token x, ``z_t`` the noisy token i, ``alpha_t`` = α_t in (0, 1], ``dalpha_t`` = α'_t = dα_t/dt <= 0,
x̂ = softmax(logits) the denoiser's estimate of the one-hot **x**. Every loss is returned
unreduced, shape (B, L); the caller masks padding and reduces. ``alpha_t`` and ``dalpha_t`` are
python floats, 0-d tensors, or tensors that broadcast as (B, 1) or (B, L).

Which terms make a true upper bound on -log p(x)
-----------------------------------------------
For the uniform-state process with a schedule α_t on t in [ε, 1]::

    -log p(x) <=  E_{q(z_ε|x)}[ uniform_reconstruction ]          (t = ε: -log p_θ(x | z_ε))
               +  ∫_ε^1 E_{q(z_t|x)}[ uniform_nelbo ] dt           (the diffusion part)
               +  uniform_prior_kl(x, α_1)                         (t = 1: KL(q(z_1|x) ‖ Uniform))

All three are needed for a true bound; each is >= 0. The integrand is the continuous-time limit
of the discrete sum Σ E KL(q(z_s|z_t,x) ‖ p_θ(z_s|z_t)) over a time grid, p_θ the SPEC §5
posterior with x̂ for x; each discrete sum plus the prior term bounds -log p(x) of its ancestral
sampler, and the integral does the same for the continuous-time reverse process (their limit).
The reconstruction term is the sum's last step ε -> 0: its decoder is the model's reverse
posterior at α_0 = 1 (see ``uniform_reconstruction``). A Monte-Carlo estimate of the integral
with t ~ U[ε, 1] is (1 - ε) · uniform_nelbo at a sampled t. If the schedule reaches α = 1 at
t = 0 and the integral starts there, the reconstruction term is absorbed into the integral.
Checked in tests/test_losses.py on a K = 3, L = 1 data law with the denoiser that makes the
reverse process exact: the full bound exceeds -Σ p log p by exactly KL(q(z_1) ‖ Uniform)
(1.9e-7 nats for p = (0.6, 0.3, 0.1), α_1 = 1e-3, any ε). Validation perplexities that report
only the diffusion part (as the reference code does) omit the prior and reconstruction terms,
which are small (α_1 ≈ 0, α_ε ≈ 1) but positive.

The masked (absorbing) process has the same three parts with ``masked_reconstruction`` and
``masked_prior_kl``; because the all-mask prior has no mass on clean tokens, the prior used when
α_1 > 0 is (1 - α_1)·δ_mask + α_1·Uniform(non-mask tokens), which makes the prior term
α_1 · log(K - 1) (zero when α_1 = 0) and keeps the bound finite.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff.typing import (
    check_finite,
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    typechecked,
)

__all__ = [
    "antithetic_times",
    "ar_loss",
    "masked_nelbo",
    "masked_prior_kl",
    "masked_reconstruction",
    "uniform_nelbo",
    "uniform_prior_kl",
    "uniform_reconstruction",
]

Level = Float[Tensor, "#b #l"] | Float[Tensor, ""] | float | int
"""alpha_t or dalpha_t: a python number, a 0-d tensor, or a tensor broadcasting as (B, 1)/(B, L)."""

# Rows of the (B*L, K) logits handled per step of the memory-lean uniform NELBO: about 1 MiB of
# float32 per temporary on CPU (stays in cache), larger on accelerators (fewer kernel launches).
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_CHUNK_ELEMENTS_DEFAULT = 1 << 25
# Below this β = Kα/(1-α) the bracket of the uniform NELBO is O(β²) while its pieces are O(β):
# those rows use a form where the first order cancels analytically (see _UniformNelboCore).
_BETA_SERIES = 0.1
_BETA_MAX = 1e30  # β is +inf at α = 1, where its terms carry weight zero; keep them finite


# ---------------------------------------------------------------------------------------------
# Argument handling shared by the losses
# ---------------------------------------------------------------------------------------------


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    # Per-row scalars are cheap (B*L of them): keep them in float64 wherever float64 exists.
    return torch.float32 if device.type == "mps" else torch.float64


def _result_dtype(logits: Tensor, *levels: Tensor | float) -> torch.dtype:
    dtype = logits.dtype
    for level in levels:
        if isinstance(level, Tensor):
            dtype = torch.promote_types(dtype, level.dtype)
    return torch.promote_types(dtype, torch.float32)  # half inputs give a float32 loss


def _check_levels(alpha: Tensor | float, dalpha: Tensor | float, alpha_name: str) -> None:
    check_range(alpha, alpha_name, 0.0, 1.0, open_lo=True)
    if checks_enabled():
        d = torch.as_tensor(dalpha)
        bad = ~torch.isfinite(d) | (d > 0)
        if bool(bad.any()):
            value = d[bad].flatten()[0].item()
            raise ValueError(
                f"dalpha_t must be finite and <= 0 (alpha_t decreases with t), got {value}"
            )


def _check_logits_finite(logits: Tensor) -> None:
    # One streaming reduction (max propagates NaN) instead of a (B, L, K) boolean mask; the full
    # check, with its message, runs only when something is wrong.
    if checks_enabled() and logits.numel() > 0:
        top = logits.detach().amax()
        if bool(torch.isnan(top)) or bool(torch.isposinf(top)):
            check_finite(logits, "logits")


def _check_common(
    logits: Tensor, x_0: Tensor, z_t: Tensor | None, z_name: str = "z_t", x_name: str = "x_0"
) -> int:
    k = logits.shape[-1]
    check_vocab_size(k, "logits.shape[-1] (the vocabulary size K)")
    check_tokens(x_0, k, x_name)
    if z_t is not None:
        check_tokens(z_t, k, z_name)
    _check_logits_finite(logits)
    return k


def _per_token(
    level: Tensor | float, shape: torch.Size, like: Tensor, dtype: torch.dtype
) -> Tensor:
    """Broadcast alpha_t / dalpha_t to (B, L) in ``dtype`` on ``like``'s device (differentiably)."""
    if isinstance(level, Tensor):
        return level.to(device=like.device, dtype=dtype).expand(shape)
    return torch.full(shape, level, dtype=dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# Uniform-state NELBO (UDLM / Duo), memory-lean
# ---------------------------------------------------------------------------------------------


def _g_small(z: Tensor) -> Tensor:
    """z - log1p(z) to rounding for |z| <= 0.1 (the naive difference loses all digits).

    With s = z / (2 + z), log1p(z) = 2 atanh(s) = 2 (s + s³/3 + s⁵/5 + ...) and z = 2s / (1 - s),
    so z - log1p(z) = 2s² / (1 - s) - 2s³ (1/3 + s²/5 + ...); |s| <= 0.053 and the series is cut
    where its next term is below float64 rounding relative to the result.
    """
    s = z / (2 + z)
    s2 = s * s
    poly = 1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 / 13))))
    return 2 * s2 / (1 - s) - 2 * s * s2 * poly


def _log_ratio(v: Tensor, xbar_x: Tensor, a_: Tensor, p: Tensor, one_m_p: Tensor) -> Tensor:
    """log(v / x̄_x) = log((A p + c) / (A + c)), from whichever of p, 1 - p is accurate."""
    near_one = torch.log1p(-a_ * one_m_p / xbar_x)
    return torch.where(p > 0.5, near_one, torch.log(v / xbar_x))


def _g(z: Tensor) -> Tensor:
    """z - log1p(z) for z > -1, accurate to rounding everywhere (series near 0)."""
    near = z.abs() <= 0.1
    return torch.where(near, _g_small(torch.where(near, z, 0.0)), z - torch.log1p(z))


def _row_reader(logits: Tensor):
    """Return ``rows(r0, r1) -> (r1 - r0, K)`` over the flattened (B*L, K) logits, never copying
    more than one chunk (an expanded, stride-0 input stays unexpanded)."""
    b, length, k = logits.shape
    try:
        flat = logits.view(b * length, k)
    except RuntimeError:
        flat = None

    def rows(r0: int, r1: int) -> Tensor:
        if flat is not None:
            return flat[r0:r1]
        idx = torch.arange(r0, r1, device=logits.device)
        return logits[idx // length, idx % length]

    return rows


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


class _UniformNelboCore(torch.autograd.Function):
    """D = Σ_{j≠i} (x̄_j/x̄_i) (ρ_j - 1 - log ρ_j), ρ_j = x̄_θ,j x̄_i / (x̄_θ,i x̄_j), per row.

    The SPEC bracket equals -D: Σ_{j≠i} (x̄_j/x̄_i)(ρ_j - 1) = K/x̄_θ,i - K/x̄_i in closed form
    (Σ_j x̄_j = Σ_j x̄_θ,j = K). So loss = -(α'/(Kα)) D >= 0, and D = 0 iff x̄_θ ∝ x̄ on the
    support. With A = Kα, c = 1 - α, v_j = x̄_θ,j = A p_j + c, β = A / c, u_j = 1 + β p_j, the
    x-dependent constants take two values (x̄_x = A + c, x̄_j = c for j ≠ x) and

    i = x:  D = C - (c/x̄_i) [T - (K-1) log(v_i / x̄_i)]
    i ≠ x:  D = C - T - (x̄_x/c) log(v_x / x̄_x) + (K - 1 + β) log u_i

    with C = K A (δ_ix - p_i) / (v_i x̄_i) and T = Σ_{j ∉ {i, x}} log1p(β p_j), the one O(K)
    reduction. For β < 0.1 the O(β) parts of these cancel to an O(β²) result; those rows use the
    same identity rewritten with g(z) = z - log1p(z) (computed by a series), where the first
    order cancels exactly:

    i = x:  (1+β) D = β²(1-p_i)(1-K p_i)/u_i + G - (K-1) g(β p_i) + (K-1) g(β)
    i ≠ x:  D = (K+β) β² p_i²/u_i + β²(1-p_x) + G + (1+β) g(β p_x) - (K+β-1) g(β p_i) - (1+β) g(β)

    with G = Σ_{j ∉ {i, x}} g(β p_j). The gradient w.r.t. the logits is closed form,
    dD/dℓ_k = p_k [a (q_k - R + q_x) + p_i A C / v_i] - [k=x] a p_x / v_x - [k=i] A C p_i / v_i,
    a = A² / x̄_i, q = p / v, R = Σ_m p_m q_m (the second reduction), recomputed chunk by chunk.
    1 - p_i and 1 - p_x are sums of the other probabilities, accurate when p → one-hot.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, x_0: Tensor, z_t: Tensor, alpha: Tensor, chunk_rows: int
    ) -> Tensor:
        b, length, k = logits.shape
        n = b * length
        dev = logits.device
        acc = alpha.dtype
        cdt = _compute_dtype(logits)
        ix = x_0.reshape(n, 1)
        ii = z_t.reshape(n, 1)
        same = (ix == ii).view(n)

        a_ = k * alpha  # A = Kα
        c_ = 1 - alpha  # c = 1 - α
        beta = (a_ / c_).clamp(max=_BETA_MAX)  # β = Kα / (1 - α); +inf at α = 1 clamped
        small = beta < _BETA_SERIES
        any_small = bool(small.any())
        beta_c = beta.to(cdt).view(n, 1)
        beta_small = torch.where(small, beta, 0.0).to(cdt).view(n, 1)

        p_i = torch.empty(n, dtype=acc, device=dev)
        p_x = torch.empty(n, dtype=acc, device=dev)
        rest = torch.empty(n, dtype=acc, device=dev)  # Σ_{j ∉ {i, x}} p_j
        t_sum = torch.empty(n, dtype=acc, device=dev)
        g_sum = torch.zeros(n, dtype=acc, device=dev)
        rows = _row_reader(logits)
        for r0 in range(0, n, chunk_rows):
            r1 = min(n, r0 + chunk_rows)
            p = torch.softmax(rows(r0, r1).to(cdt), dim=-1)
            ci, cx = ii[r0:r1], ix[r0:r1]
            p_i[r0:r1] = p.gather(1, ci).view(-1)
            p_x[r0:r1] = p.gather(1, cx).view(-1)
            p.scatter_(1, ci, 0.0).scatter_(1, cx, 0.0)
            rest[r0:r1] = p.sum(-1)
            if any_small:
                g_sum[r0:r1] = _g_small(p * beta_small[r0:r1]).sum(-1)
            t_sum[r0:r1] = p.mul_(beta_c[r0:r1]).log1p_().sum(-1)

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
        if any_small:
            bs = torch.where(small, beta, 0.0)
            u_i = 1 + bs * p_i
            g_b, g_bi, g_bx = _g_small(bs), _g_small(bs * p_i), _g_small(bs * p_x)
            b2 = bs * bs
            s_same = (
                b2 * one_m_pi * (1 - kf * p_i) / u_i + g_sum - (kf - 1) * g_bi + (kf - 1) * g_b
            ) / (1 + bs)
            s_diff = (
                (kf + bs) * b2 * p_i * p_i / u_i
                + b2 * one_m_px
                + g_sum
                + (1 + bs) * g_bx
                - (kf + bs - 1) * g_bi
                - (1 + bs) * g_b
            )
            d = torch.where(small, torch.where(same, s_same, s_diff), d)
        # z_t ≠ x_0 at α = 1 is impossible under q(z_t | x_0): the bound is +inf there.
        d = torch.where(~same & (c_ == 0), math.inf, d.clamp_min(0.0))

        ctx.save_for_backward(logits, ii, ix, a_, c_, xbar_i, v_i, p_i, cc)
        ctx.chunk_rows = chunk_rows
        return d.view(b, length)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_d: Tensor):  # type: ignore[override]
        logits, ii, ix, a_, c_, xbar_i, v_i, p_i, cc = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        b, length, k = logits.shape
        n = b * length
        cdt = _compute_dtype(logits)
        chunk_rows = ctx.chunk_rows
        gd = grad_d.reshape(n).to(a_.dtype)
        a_coef = a_ * a_ / xbar_i  # a = A² / x̄_i
        at_i = (-gd * a_ * cc / v_i * p_i).to(cdt).view(n, 1)  # -A C p_i / v_i at k = i
        shift_i = gd * p_i * a_ * cc / v_i
        # v = A p + c with c floored at the smallest normal: at α = 1, p_k = 0 gives q_k = 0.
        c_floor = c_.to(cdt).clamp_min(torch.finfo(cdt).tiny).view(n, 1)
        a_c = a_.to(cdt).view(n, 1)
        scale = (gd * a_coef).to(cdt).view(n, 1)
        grad = torch.empty((n, k), dtype=logits.dtype, device=logits.device)
        in_place = cdt == logits.dtype
        rows = _row_reader(logits)
        for r0 in range(0, n, chunk_rows):
            sl = slice(r0, min(n, r0 + chunk_rows))
            p = torch.softmax(rows(sl.start, sl.stop).to(cdt), dim=-1)
            q = torch.mul(p, a_c[sl]).add_(c_floor[sl])  # v = A p + c
            torch.div(p, q, out=q)  # q = p / v
            r_sum = torch.mul(p, q).sum(-1, keepdim=True)  # R = Σ p q
            # q_x and R from this chunk, so that at a one-hot x̂ the terms cancel to exactly 0.
            at_x = -(scale[sl] * q.gather(1, ix[sl]))  # -a q_x at k = x
            shift = gd[sl, None] * a_coef[sl, None] * (q.gather(1, ix[sl]) - r_sum).to(gd.dtype)
            shift = (shift + shift_i[sl, None]).to(cdt)
            q.mul_(scale[sl]).add_(shift)
            out = torch.mul(q, p, out=grad[sl]) if in_place else q.mul_(p)
            out.scatter_add_(1, ix[sl], at_x).scatter_add_(1, ii[sl], at_i[sl])
            if not in_place:
                grad[sl] = out
        return grad.view(b, length, k), None, None, None, None


@typechecked
def uniform_nelbo(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    *,
    chunk_rows: int | None = None,
) -> Float[Tensor, "b l"]:
    """Continuous-time uniform-state NELBO per token (UDLM; SPEC §3).

    With x̄ = Kα_t **x** + (1 - α_t), x̄_θ = Kα_t x̂ + (1 - α_t) and i = z_t::

        loss = (α'_t / (K α_t)) [K/x̄_i - K/x̄_θ,i - Σ_{j≠i} (x̄_j/x̄_i) log(x̄_θ,i x̄_j / (x̄_θ,j x̄_i))]

    It is >= 0 and exactly 0 when x̂ is the one-hot of x_0 (``-inf`` logits are fine).

    Args:
        logits: (B, L, K) denoiser output; x̂ = softmax(logits). K is read from here.
        x_0: (B, L) clean token ids in [0, K).
        z_t: (B, L) noisy token ids in [0, K).
        alpha_t: α_t in (0, 1]; float, 0-d, (B, 1) or (B, L). Treated as a constant: a tensor
            that requires grad is rejected (the loss differentiates w.r.t. logits and dalpha_t).
        dalpha_t: α'_t <= 0, same shapes as alpha_t.
        chunk_rows: rows of the flattened (B*L, K) logits processed at a time (default: about
            1 MiB of float32 per temporary on CPU, 128 MiB on accelerators).

    Returns:
        (B, L) loss; float64 when any input is float64, float32 for float32 or half inputs.

    Memory: nothing of size (B, L, K) is kept for backward besides the logits themselves; the
    backward recomputes softmax chunk by chunk and writes the closed-form gradient straight into
    the logits' gradient (see ``_UniformNelboCore``). No double backward. Exactly at α_t = 1 a
    position with z_t ≠ x_0 is impossible: that raises (or gives +inf under ``unchecked()``).
    """
    k = _check_common(logits, x_0, z_t)
    _check_levels(alpha_t, dalpha_t, "alpha_t")
    if isinstance(alpha_t, Tensor) and alpha_t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_t requires grad, but uniform_nelbo treats it as a constant; pass "
            "alpha_t.detach() (gradients flow to logits and dalpha_t)"
        )
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    out_dtype = _result_dtype(logits, alpha_t, dalpha_t)
    acc = _accumulation_dtype(logits.device)
    shape = x_0.shape
    alpha = _per_token(alpha_t, shape, logits, acc).reshape(-1)
    if checks_enabled():
        impossible = (alpha.view(shape) == 1) & (z_t != x_0)
        if bool(impossible.any()):
            raise ValueError(
                "z_t differs from x_0 where alpha_t = 1: impossible under q(z_t | x_0) "
                "(the uniform NELBO is +inf there)"
            )
    if chunk_rows is None:
        budget = _CHUNK_ELEMENTS.get(logits.device.type, _CHUNK_ELEMENTS_DEFAULT)
        chunk_rows = max(1, budget // k)
    d = _UniformNelboCore.apply(logits, x_0, z_t, alpha.contiguous(), chunk_rows)
    alpha_bl = alpha.view(shape)
    dalpha = _per_token(dalpha_t, shape, logits, acc)
    loss = (-dalpha / (k * alpha_bl)) * d
    return loss.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Masked (absorbing) NELBO, SUBS parameterisation
# ---------------------------------------------------------------------------------------------


def _log_prob_without_mask(logits: Tensor, x_0: Tensor, mask_id: int) -> Tensor:
    """log x̂[x_0] with the mask logit excluded (-∞), without copying or editing the logits."""
    lse = torch.logaddexp(
        torch.logsumexp(logits[..., :mask_id], dim=-1),
        torch.logsumexp(logits[..., mask_id + 1 :], dim=-1),
    )
    return logits.gather(-1, x_0.unsqueeze(-1)).squeeze(-1) - lse


def _check_mask_id(mask_id: int, k: int, x_0: Tensor) -> None:
    if isinstance(mask_id, bool) or not 0 <= mask_id < k:
        raise ValueError(f"mask_id must be a token id in [0, {k}) (K from logits), got {mask_id}")
    if checks_enabled() and bool((x_0 == mask_id).any()):
        raise ValueError(f"x_0 contains the mask token mask_id={mask_id}; clean data never does")


@typechecked
def masked_nelbo(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    mask_id: int,
) -> Float[Tensor, "b l"]:
    """Continuous-time masked-diffusion NELBO per token (MDLM, SUBS; SPEC §3).

    loss = (α'_t / (1 - α_t)) · log x̂[x_0] where z_t = mask_id, 0 elsewhere (SUBS copies the
    unmasked tokens). x̂ is the softmax of the logits with the mask logit set to -∞; the input
    logits are not modified. Shapes and dtypes as in ``uniform_nelbo``; K (from logits) counts the
    mask token. Result >= 0.
    """
    k = _check_common(logits, x_0, z_t)
    _check_mask_id(mask_id, k, x_0)
    _check_levels(alpha_t, dalpha_t, "alpha_t")
    out_dtype = _result_dtype(logits, alpha_t, dalpha_t)
    shape = x_0.shape
    log_p = _log_prob_without_mask(logits, x_0, mask_id).to(out_dtype)
    alpha = _per_token(alpha_t, shape, logits, out_dtype)
    dalpha = _per_token(dalpha_t, shape, logits, out_dtype)
    masked = z_t == mask_id
    # 1 - α is floored so that unmasked positions at α = 1 (weight unused) stay finite.
    weight = torch.where(masked, dalpha / (1 - alpha).clamp_min(torch.finfo(out_dtype).tiny), 0.0)
    return torch.where(masked, weight * log_p, 0.0)


# ---------------------------------------------------------------------------------------------
# Autoregressive loss and the bound terms
# ---------------------------------------------------------------------------------------------


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    b, length, k = logits.shape
    out_dtype = _result_dtype(logits)
    nll = F.cross_entropy(logits.reshape(b * length, k).to(out_dtype), targets.reshape(b * length),
                          reduction="none")
    return nll.view(b, length)


@typechecked
def ar_loss(logits: Float[Tensor, "b l k"], targets: Int[Tensor, "b l"]) -> Float[Tensor, "b l"]:
    """Next-token cross-entropy per token, -log softmax(logits)[targets], shape (B, L).

    ``targets`` must already be shifted by the caller: ``logits[:, j]`` is the prediction for
    ``targets[:, j]`` (typically ``targets = x[:, 1:]`` and ``logits = model(x[:, :-1])``).
    """
    _check_common(logits, targets, None, x_name="targets")
    return _nll(logits, targets)


@typechecked
def uniform_reconstruction(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_eps: Int[Tensor, "b l"],
    alpha_eps: Level,
) -> Float[Tensor, "b l"]:
    """Reconstruction term -log p_θ(x_0 | z_ε) of the uniform-state bound, per token.

    The decoder is the model's own last reverse step ε -> 0, the SPEC §5 posterior with α_0 = 1:

        p_θ(x_0 = j | z_ε = i) = x̂_j (α_ε δ_ij + (1 - α_ε)/K) / (α_ε x̂_i + (1 - α_ε)/K)

    with x̂ = softmax(logits) the denoiser's output at (z_ε, ε). This is the decoder that makes
    the bound tight: with an exact denoiser, integral + reconstruction + prior exceeds -log p(x)
    only by KL(q(z_1) ‖ Uniform). (Using x̂ itself as the decoder is also a valid bound, but a
    loose one: the x̂ that makes the reverse process exact is not the posterior p(x_0 | z_ε).)
    Add E_{q(z_ε|x)} of this to the integral of ``uniform_nelbo`` over [ε, 1] and the prior term.
    A position with z_ε ≠ x_0 at α_ε = 1 is impossible and gives +inf.
    """
    k = _check_common(logits, x_0, z_eps, "z_eps")
    check_range(alpha_eps, "alpha_eps", 0.0, 1.0, open_lo=True)
    out_dtype = _result_dtype(logits, alpha_eps)
    work = logits.to(out_dtype)
    lse = torch.logsumexp(work, dim=-1)
    log_x = work.gather(-1, x_0.unsqueeze(-1)).squeeze(-1) - lse
    log_i = work.gather(-1, z_eps.unsqueeze(-1)).squeeze(-1) - lse
    alpha = _per_token(alpha_eps, x_0.shape, logits, out_dtype)
    log_c = torch.log((1 - alpha) / k)
    log_forward = torch.where(z_eps == x_0, torch.logaddexp(torch.log(alpha), log_c), log_c)
    log_norm = torch.logaddexp(torch.log(alpha) + log_i, log_c)
    return -(log_x + log_forward - log_norm)


@typechecked
def masked_reconstruction(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_eps: Int[Tensor, "b l"],
    mask_id: int,
) -> Float[Tensor, "b l"]:
    """Reconstruction term -log p_θ(x_0 | z_ε) of the masked bound, per token.

    Unmasked positions are copied (SUBS), so their term is 0; masked ones use the denoiser's x̂ at
    (z_ε, ε) with the mask logit excluded.
    """
    k = _check_common(logits, x_0, z_eps, "z_eps")
    _check_mask_id(mask_id, k, x_0)
    log_p = _log_prob_without_mask(logits, x_0, mask_id).to(_result_dtype(logits))
    return torch.where(z_eps == mask_id, -log_p, 0.0)


def _prior_dtype(alpha_1: Tensor | float) -> torch.dtype:
    if isinstance(alpha_1, Tensor):
        return torch.promote_types(alpha_1.dtype, torch.float32)
    return torch.get_default_dtype()


@typechecked
def uniform_prior_kl(
    x_0: Int[Tensor, "b l"], alpha_1: Level, vocab_size: int
) -> Float[Tensor, "b l"]:
    """KL(q(z_1 | x_0) ‖ Uniform(K)) per token, in closed form.

    q(z_1 | x) puts (1 + (K-1) α_1)/K on x and (1 - α_1)/K elsewhere, so the KL is
    ((1 + (K-1)α)/K) log(1 + (K-1)α) + ((K-1)(1-α)/K) log(1 - α). Same for every token; returned
    as (B, L) (float64 when alpha_1 is a float64 tensor).
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_1, "alpha_1", 0.0, 1.0)
    out_dtype = _prior_dtype(alpha_1)
    acc = _accumulation_dtype(x_0.device)
    a = torch.as_tensor(alpha_1, dtype=acc, device=x_0.device)
    k = float(vocab_size)
    # With m = (K-1)α and log1p(z) = z - g(z), the O(α) parts cancel exactly:
    # K · KL = m² + (K-1)α² - (1 + m) g(m) - (K-1)(1-α) g(-α) >= 0, accurate for tiny α.
    below = a < 1
    a_safe = torch.where(below, a, 0.0)
    m = (k - 1) * a_safe
    kl = (m * m + (k - 1) * a_safe * a_safe - (1 + m) * _g(m)
          - (k - 1) * (1 - a_safe) * _g(-a_safe)) / k
    kl = torch.where(below, kl, math.log(vocab_size))  # α = 1: q is one-hot, KL = log K
    return kl.clamp_min(0.0).to(out_dtype).expand(x_0.shape).clone()


@typechecked
def masked_prior_kl(
    x_0: Int[Tensor, "b l"], alpha_1: Level, vocab_size: int
) -> Float[Tensor, "b l"]:
    """Prior term of the masked bound per token: α_1 · log(K - 1).

    The exact all-mask prior gives +inf whenever α_1 > 0 (q(z_1|x) keeps mass α_1 on x). The prior
    used here is (1 - α_1) δ_mask + α_1 Uniform(the K - 1 non-mask tokens): the all-mask prior
    when α_1 = 0, and KL(q(z_1|x) ‖ prior) = α_1 log(K - 1) otherwise. K = ``vocab_size`` counts
    the mask token.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_1, "alpha_1", 0.0, 1.0)
    out_dtype = _prior_dtype(alpha_1)
    a = torch.as_tensor(alpha_1, dtype=out_dtype, device=x_0.device)
    return (a * math.log(vocab_size - 1)).expand(x_0.shape).clone()


# ---------------------------------------------------------------------------------------------
# Time sampling
# ---------------------------------------------------------------------------------------------


@typechecked
def antithetic_times(
    batch_size: int,
    *,
    eps: float = 1e-3,
    world_size: int = 1,
    rank: int = 0,
    accum_steps: int = 1,
    accum_index: int = 0,
    u: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " b"]:
    """Stratified (antithetic) times over the global batch, mapped to [eps, 1].

    The global batch has n = batch_size · world_size · accum_steps sequences; sequence
    g = (accum_index · world_size + rank) · batch_size + j gets t_g = (u + g/n) mod 1, returned as
    eps + (1 - eps) t_g. Across all ranks and accumulation steps the n times are exactly one point
    per stratum [g/n, (g+1)/n) shifted by u: they never repeat, and their mean has far lower
    variance than i.i.d. times.

    The offset u must be the same in every call that builds one global batch (all ranks, all
    accumulation steps): pass ``u`` (e.g. drawn once per optimiser step and broadcast), or pass a
    ``generator`` seeded identically on every rank *and* reset to the same state for every
    accumulation step (e.g. ``torch.Generator().manual_seed(seed + optimiser_step)``). A
    generator that advances between accumulation steps gives different u's, breaking the strata.
    With neither, u is drawn from torch's global generator (fine for a single process, step).

    Returns:
        (batch_size,) times in [eps, 1].
    """
    for name, value, lo in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                            ("accum_steps", accum_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    if not isinstance(accum_index, int) or not 0 <= accum_index < accum_steps:
        raise ValueError(
            f"accum_index must be an integer in [0, accum_steps={accum_steps}), got {accum_index!r}"
        )
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    n = batch_size * world_size * accum_steps
    if u is None:
        gen_device = generator.device if generator is not None else "cpu"
        u_t = torch.rand((), generator=generator, device=gen_device, dtype=torch.float64)
    else:
        u_t = torch.as_tensor(u, dtype=torch.float64)
        if u_t.numel() != 1 or not bool((u_t >= 0) & (u_t < 1)):
            raise ValueError(f"u must be a single number in [0, 1), got {u}")
        u_t = u_t.reshape(())
    start = (accum_index * world_size + rank) * batch_size
    g = torch.arange(start, start + batch_size, dtype=torch.float64, device=u_t.device)
    t = torch.remainder(u_t + g / n, 1.0)
    return (eps + (1 - eps) * t).to(device=device or u_t.device, dtype=dtype)
