"""Per-token KL between two softmaxes, lean in memory: the distillers' loss (Concepts §6).

Notation: logits (B, L, K) over K classes; p = softmax(p_logits), q = softmax(q_logits);
``token_kl`` returns KL(p || q) = sum_k p_k (log p_k - log q_k) per token, (B, L).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from discdiff._chunks import chunk_rows
from discdiff.typing import typechecked

__all__ = ["token_kl"]


def _chunk_rows(k: int, device: torch.device) -> int:
    return chunk_rows(k, device, cpu_elements=1 << 19, device_elements=1 << 26)


def _log_ratio(p_logits: Tensor, q_logits: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(p, log p - log q) for a chunk of rows, in ``dtype``; 0 where p = 0 (no 0 * inf NaNs)."""
    log_p = torch.log_softmax(p_logits.to(dtype), dim=-1)
    log_q = torch.log_softmax(q_logits.to(dtype), dim=-1)
    p = log_p.exp()
    return p, torch.where(p > 0, log_p - log_q, 0.0)


class _TokenKL(torch.autograd.Function):
    """KL(softmax(a) || softmax(b)) per row of (N, K) logits, processed in chunks of rows.

    Saves only the two logits tensors (which exist anyway): no (N, K) temporary outlives a chunk.
    With p = softmax(a), q = softmax(b), d = log p - log q and kl = sum p d:
    d kl / d a = p (d - kl) and d kl / d b = q - p.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        n, k = a.shape
        out = torch.empty(n, dtype=dtype, device=a.device)
        step = _chunk_rows(k, a.device)
        for r0 in range(0, n, step):
            p, d = _log_ratio(a[r0 : r0 + step], b[r0 : r0 + step], dtype)
            out[r0 : r0 + step] = (p * d).sum(-1)
        ctx.save_for_backward(a, b, out)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        a, b, kl = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = torch.empty_like(a) if need_a else None
        grad_b = torch.empty_like(b) if need_b else None
        n, k = a.shape
        step = _chunk_rows(k, a.device)
        for r0 in range(0, n, step):
            rows = slice(r0, r0 + step)
            g = grad[rows].to(ctx.dtype).unsqueeze(-1)
            p, d = _log_ratio(a[rows], b[rows], ctx.dtype)
            if grad_a is not None:
                grad_a[rows] = g * p * (d - kl[rows].unsqueeze(-1))
            if grad_b is not None:
                q = torch.softmax(b[rows].to(ctx.dtype), dim=-1)
                grad_b[rows] = g * (q - p)
        return grad_a, grad_b, None


@typechecked
def token_kl(
    p_logits: Float[Tensor, "b l k"],
    q_logits: Float[Tensor, "b l k"],
    *,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "b l"]:
    """KL(softmax(p_logits) || softmax(q_logits)) per token, (B, L), computed in ``dtype``.

    Log-softmax based (no overflow, no log 0: classes with p = 0 contribute 0), differentiable
    in both arguments, and lean: backward recomputes the softmaxes chunk by chunk instead of
    keeping (B, L, K) temporaries alive. ``dtype`` (float32 or float64) is the dtype of the
    arithmetic and of the result; float64 removes rounding from near-zero KLs.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p_logits and q_logits must have the same shape, got {tuple(p_logits.shape)} and "
            f"{tuple(q_logits.shape)}"
        )
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    b, ln, k = p_logits.shape
    flat = _TokenKL.apply(p_logits.reshape(b * ln, k), q_logits.reshape(b * ln, k), dtype)
    return flat.reshape(b, ln)
