"""The uniform-state NELBO with Triton kernels: the forward reads the logits once, the backward
reads them once and writes their gradient once.

The mathematics is ``discdiff.losses.uniform``'s (``_UniformNelboCore``): per row, a handful of
O(K) reductions of the softmax (Σ p_j, Σ log1p(β p_j), Σ g(β p_j) over j ∉ {i, x}, and
R = Σ_j p_j q_j), then a closed form of O(1) per row in float64 (``discdiff.losses.uniform.
row_terms``, which the PyTorch path calls too), and a closed-form gradient
p_k (scale q_k + shift) + [k = x] at_x + [k = i] at_i. The forward kernel computes the
reductions in one sweep of the row after an online max/sum sweep; the second sweep re-reads the
row while it is still in L2 (one program per SM: the rows in flight take ~26 MiB at K = 50k on
an H100, within its 50 MiB L2), so the logits come from memory once. The backward kernel needs
only the per-row max and normaliser saved by the forward: one read, one write. Nothing of size
(B, L, K) is saved besides the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff.kernels._backend import Backend, use_triton
from discdiff.losses import uniform as _uniform
from discdiff.losses._common import (
    Level,
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
from discdiff.losses.uniform import row_terms, series_split
from discdiff.typing import checks_enabled, typechecked

__all__ = ["row_terms", "uniform_nelbo"]


class _TritonUniformNelbo(torch.autograd.Function):
    """D (n,) of flattened logits (n, K) by the Triton kernels; see ``row_terms``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, x_id: Tensor, i_id: Tensor, alpha: Tensor) -> Tensor:  # type: ignore[override]
        from discdiff.kernels import _triton

        n, k = logits.shape
        f32 = torch.float32
        a_ = k * alpha
        c_ = 1 - alpha
        beta, small = series_split(alpha, k)
        c_floor = c_.to(f32).clamp_min(torch.finfo(f32).tiny)
        coef = torch.stack([beta.to(f32), torch.where(small, beta, 0.0).to(f32), a_.to(f32),
                            c_floor]).contiguous()  # fmt: skip
        stats = torch.empty(len(_triton.NELBO_STATS), n, dtype=f32, device=logits.device)
        _triton.nelbo_forward(logits, x_id, i_id, coef, stats)
        p_i, p_x, _, rest, t_sum, g_sum, _ = stats[2:].to(alpha.dtype).unbind(0)
        d, saved = row_terms(p_i, p_x, rest, t_sum, g_sum, x_id == i_id, alpha, k)
        ctx.save_for_backward(logits, x_id, i_id, stats, c_floor, *saved)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_d: Tensor):  # type: ignore[override]
        from discdiff.kernels import _triton

        logits, x_id, i_id, stats, c_floor, a_, c_, xbar_i, v_i, p_i, cc = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        f32 = torch.float32
        gd = grad_d.to(a_.dtype)
        q_x = stats[4].to(a_.dtype)
        r_sum = stats[8].to(a_.dtype)
        a_coef = a_ * a_ / xbar_i  # a = A² / x̄_i
        scale = gd * a_coef
        at_i = -gd * a_ * cc / v_i * p_i  # -A C p_i / v_i at k = i
        shift = scale * (q_x - r_sum) - at_i
        at_x = -scale * q_x  # -a q_x at k = x
        coef = torch.stack([a_.to(f32), c_floor, scale.to(f32), shift.to(f32), at_x.to(f32),
                            at_i.to(f32)]).contiguous()  # fmt: skip
        grad = torch.empty_like(logits)
        _triton.nelbo_backward(logits, grad, x_id, i_id, stats, coef)
        return grad, None, None, None


def _rows(logits: Tensor) -> Tensor:
    """The logits as (B·L, K) with a unit last stride (a copy only if they have none)."""
    b, length, k = logits.shape
    flat = logits.reshape(b * length, k)
    return flat if flat.stride(-1) == 1 else flat.contiguous()


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
    backend: Backend = "auto",
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """``discdiff.losses.uniform_nelbo`` (same arguments, result and gradient), by the Triton
    kernels on CUDA when Triton imports and by the library's PyTorch path otherwise.

    ``mask`` and ``reduction`` as in ``discdiff.losses.uniform_nelbo`` (the tokens that count;
    "none", "sum" or "mean" over them). ``backend``: "auto" (as above), "torch", or "triton"
    (also on CPU tensors under the Triton interpreter, ``TRITON_INTERPRET=1``: how the tests run
    it). The Triton path computes the
    reductions in float32 (in the logits' precision for float32 logits; float64 logits are read
    as float32 too, so use "torch" for float64 work) and the per-row closed form in float64.
    """
    if not use_triton(logits, backend):
        return _uniform.uniform_nelbo(
            logits, x_0, z_t, alpha_t, dalpha_t, mask=mask, reduction=reduction
        )
    k = check_common(logits, x_0, z_t)
    check_levels(alpha_t, dalpha_t, "alpha_t")
    check_mask(mask, x_0.shape)
    check_reduction(reduction)
    if isinstance(alpha_t, Tensor) and alpha_t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_t requires grad, but uniform_nelbo treats it as a constant; pass "
            "alpha_t.detach() (gradients flow to logits and dalpha_t)"
        )
    out_dtype = result_dtype(logits, alpha_t, dalpha_t)
    acc = accumulation_dtype(logits.device)
    shape = x_0.shape
    alpha = per_token(alpha_t, shape, logits, acc)
    if mask is not None:
        z_t = torch.where(mask, z_t, x_0)  # as in the PyTorch path: ignored rows stay finite
    if checks_enabled() and bool(((alpha == 1) & (z_t != x_0)).any()):
        raise ValueError(
            "z_t differs from x_0 where alpha_t = 1: impossible under q(z_t | x_0) "
            "(the uniform NELBO is +inf there)"
        )
    d = _TritonUniformNelbo.apply(
        _rows(logits), x_0.reshape(-1).contiguous(), z_t.reshape(-1).contiguous(),
        alpha.reshape(-1).contiguous(),
    )  # fmt: skip
    dalpha = per_token(dalpha_t, shape, logits, acc)
    return reduce_loss((-dalpha / (k * alpha)) * d.view(shape), mask, reduction).to(out_dtype)
