"""The uniform-state NELBO (UDLM / Duo), memory-lean: an autograd function in rewritten algebra.

The formula as Concepts §3 writes it is ``discdiff.losses.reference.uniform_nelbo_reference``; the
tests hold this fast path to it. The per-row closed form (``row_terms``) is
``discdiff.numerics``', shared with the Triton kernels, which ``uniform_nelbo`` runs instead of
``UniformNelboCore`` where ``discdiff.kernels.dispatch`` says so (``backend=``).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff._chunks import chunk_rows as default_chunk_rows
from discdiff.kernels.dispatch import Backend, provide, use_triton
from discdiff.kernels.nelbo import TritonUniformNelbo, rows_of
from discdiff.losses._common import (
    Reduction,
    accumulation_dtype,
    check_common,
    check_levels,
    check_mask,
    check_reduction,
    per_token,
    reduce_loss,
    result_dtype,
)
from discdiff.numerics import g_small, row_terms, series_split
from discdiff.typing import Level, check_count, checks_enabled, typechecked

__all__ = ["UniformNelboCore", "row_terms", "series_split", "uniform_nelbo"]


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


class UniformNelboCore(torch.autograd.Function):
    """D = Σ_{j≠i} (x̄_j/x̄_i) (ρ_j - 1 - log ρ_j), ρ_j = x̄_θ,j x̄_i / (x̄_θ,i x̄_j), per row.

    The formula's bracket equals -D: Σ_{j≠i} (x̄_j/x̄_i)(ρ_j - 1) = K/x̄_θ,i - K/x̄_i in closed form
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

        beta, small = series_split(alpha, k)
        # Whether any row needs the series form. On the CPU the test costs nothing and spares
        # the O(K) sum of g; on an accelerator it would be a host sync (and under
        # torch.compile a graph break), so there the sum always runs.
        series = True
        if dev.type == "cpu" and not torch.compiler.is_compiling():
            series = bool(small.any())
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
            if series:
                g_sum[r0:r1] = g_small(p * beta_small[r0:r1]).sum(-1)
            t_sum[r0:r1] = p.mul_(beta_c[r0:r1]).log1p_().sum(-1)

        d, (a_, c_, xbar_i, v_i, p_i, cc) = row_terms(
            p_i, p_x, rest, t_sum, g_sum, same, alpha, k, series=series
        )
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


def _divergence(
    logits: Tensor, x_0: Tensor, z_t: Tensor, alpha: Tensor, chunk_rows: int | None,
    backend: Backend,
) -> Tensor:  # fmt: skip
    """D (B, L) of checked inputs (α_t flattened, (B·L,)), by the Triton kernels or by
    ``UniformNelboCore``, as ``discdiff.kernels.dispatch`` decides for ``backend``."""
    b, length, k = logits.shape
    if use_triton(logits, backend):
        x_f, z_f = x_0.reshape(-1).contiguous(), z_t.reshape(-1).contiguous()
        return TritonUniformNelbo.apply(rows_of(logits), x_f, z_f, alpha).view(b, length)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(k, logits.device)
    return UniformNelboCore.apply(logits, x_0, z_t, alpha, chunk_rows)


@provide("uniform_nelbo")
@typechecked
def uniform_nelbo(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    *,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
    chunk_rows: int | None = None,
    backend: Backend = "auto",
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """Continuous-time uniform-state NELBO per token (UDLM; Concepts §3).

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
        mask: (B, L) bool, True at the tokens that count (e.g. ``x_0 != pad_id``), or None (all
            count). Ignored tokens get loss 0 and no gradient (whatever their ids and levels).
        reduction: "none" (B, L) per token; "sum" or "mean" over the tokens that count, 0-d
            ("mean" divides by their number, as ``F.cross_entropy`` with ``ignore_index``).
        chunk_rows: rows of the flattened (B*L, K) logits processed at a time by the PyTorch
            path (default: about 1 MiB of float32 per temporary on CPU, 128 MiB on
            accelerators).
        backend: "auto" (``discdiff.kernels.dispatch``'s rule: the Triton kernels on CUDA when
            Triton imports and the logits are not float64, the PyTorch path otherwise), "torch",
            or "triton" (on a CPU tensor only under ``TRITON_INTERPRET=1``). The Triton path
            reads the logits once forward and once backward, reduces in float32 and forms the
            per-row closed form in float64, as the PyTorch path does.

    Returns:
        (B, L) loss, or 0-d when reduced; float64 when any input is float64, float32 for float32
        or half inputs.

    Memory: nothing of size (B, L, K) is kept for backward besides the logits themselves; the
    backward recomputes softmax chunk by chunk and writes the closed-form gradient straight into
    the logits' gradient (see ``UniformNelboCore``). No double backward. Exactly at α_t = 1 a
    position with z_t ≠ x_0 is impossible: that raises (or gives +inf under ``unchecked()``).
    """
    k = check_common(logits, x_0, z_t)
    check_levels(alpha_t, dalpha_t, "alpha_t")
    check_mask(mask, x_0.shape)
    check_reduction(reduction)
    if isinstance(alpha_t, Tensor) and alpha_t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_t requires grad, but uniform_nelbo treats it as a constant; pass "
            "alpha_t.detach() (gradients flow to logits and dalpha_t)"
        )
    if chunk_rows is not None:
        chunk_rows = check_count(chunk_rows, "chunk_rows")
    out_dtype = result_dtype(logits, alpha_t, dalpha_t)
    acc = accumulation_dtype(logits.device)
    shape = x_0.shape
    alpha = per_token(alpha_t, shape, logits, acc).reshape(-1)
    if mask is not None:
        # An ignored token is never drawn from q(z_t | x_0) (padding): z_t = x_0 there keeps its
        # row finite, so that its zero gradient stays zero (0 * inf would be NaN).
        z_t = torch.where(mask, z_t, x_0)
    if checks_enabled():
        impossible = (alpha.view(shape) == 1) & (z_t != x_0)
        if bool(impossible.any()):
            raise ValueError(
                "z_t differs from x_0 where alpha_t = 1: impossible under q(z_t | x_0) "
                "(the uniform NELBO is +inf there)"
            )
    d = _divergence(logits, x_0, z_t, alpha.contiguous(), chunk_rows, backend)
    alpha_bl = alpha.view(shape)
    dalpha = per_token(dalpha_t, shape, logits, acc)
    loss = (-dalpha / (k * alpha_bl)) * d
    return reduce_loss(loss, mask, reduction).to(out_dtype)
