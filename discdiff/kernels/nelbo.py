"""The uniform-state NELBO with Triton kernels: the forward reads the logits once, the backward
reads them once and writes their gradient once.

The mathematics is ``discdiff.losses.uniform``'s (``UniformNelboCore``): per row, a handful of
O(K) reductions of the softmax (Σ p_j, Σ log1p(β p_j), Σ g(β p_j) over j ∉ {i, x}, and
R = Σ_j p_j q_j), then a closed form of O(1) per row in float64 (``discdiff.numerics.row_terms``,
which the PyTorch path calls too), and a closed-form gradient
p_k (scale q_k + shift) + [k = x] at_x + [k = i] at_i. The forward kernel computes the
reductions in one sweep of the row after an online max/sum sweep; the second sweep re-reads the
row while it is still in L2 (one program per SM: the rows in flight take ~26 MiB at K = 50k on
an H100, within its 50 MiB L2), so the logits come from memory once. The backward kernel needs
only the per-row max and normaliser saved by the forward: one read, one write. Nothing of size
(B, L, K) is saved besides the logits.

``TritonUniformNelbo`` works on trusted rows; the checked, reduced loss that chooses between it
and the PyTorch path is ``discdiff.losses.uniform_nelbo`` (``backend=``), which
``uniform_nelbo`` here is.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff.kernels.dispatch import Backend, entry_point
from discdiff.numerics import row_terms, series_split
from discdiff.typing import Level, typechecked

__all__ = ["TritonUniformNelbo", "row_terms", "rows_of", "uniform_nelbo"]

Reduction = Literal["none", "sum", "mean"]


class TritonUniformNelbo(torch.autograd.Function):
    """D (n,) of flattened logits (n, K), unit last stride, by the Triton kernels; see
    ``row_terms``. Inputs are trusted: token ids x_0, z_t (n,) int64 in [0, K), α_t (n,) in the
    accumulation dtype. Gradient to the logits only."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, x_id: Tensor, i_id: Tensor, alpha: Tensor) -> Tensor:  # type: ignore[override]
        from discdiff.kernels import triton_kernels

        n, k = logits.shape
        f32 = torch.float32
        a_ = k * alpha
        c_ = 1 - alpha
        beta, small = series_split(alpha, k)
        c_floor = c_.to(f32).clamp_min(torch.finfo(f32).tiny)
        coef = torch.stack([beta.to(f32), torch.where(small, beta, 0.0).to(f32), a_.to(f32),
                            c_floor]).contiguous()  # fmt: skip
        stats = torch.empty(len(triton_kernels.NELBO_STATS), n, dtype=f32, device=logits.device)
        triton_kernels.nelbo_forward(logits, x_id, i_id, coef, stats)
        p_i, p_x, _, rest, t_sum, g_sum, _ = stats[2:].to(alpha.dtype).unbind(0)
        d, saved = row_terms(p_i, p_x, rest, t_sum, g_sum, x_id == i_id, alpha, k)
        ctx.save_for_backward(logits, x_id, i_id, stats, c_floor, *saved)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_d: Tensor):  # type: ignore[override]
        from discdiff.kernels import triton_kernels

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
        triton_kernels.nelbo_backward(logits, grad, x_id, i_id, stats, coef)
        return grad, None, None, None


def rows_of(logits: Tensor) -> Tensor:
    """The logits (B, L, K) as (B·L, K) with a unit last stride (a copy only if they have none)."""
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
    """``discdiff.losses.uniform_nelbo`` (same arguments, result and gradient): by the Triton
    kernels on CUDA when Triton imports, by the library's PyTorch path otherwise
    (``discdiff.kernels.dispatch``'s rule).

    ``mask`` and ``reduction`` as in ``discdiff.losses.uniform_nelbo`` (the tokens that count;
    "none", "sum" or "mean" over them). ``backend``: "auto" (as above; float64 logits take the
    PyTorch path), "torch", or "triton" (also on CPU tensors under the Triton interpreter,
    ``TRITON_INTERPRET=1``: how the tests run it). The Triton path computes the reductions in
    float32 (forced "triton" reads float64 logits as float32 too) and the per-row closed form in
    float64.
    """
    return entry_point("uniform_nelbo")(
        logits, x_0, z_t, alpha_t, dalpha_t, mask=mask, reduction=reduction, backend=backend
    )
