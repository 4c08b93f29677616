"""The output (vocabulary) projection x @ W^T + b, computed blockwise on the CPU for speed."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["vocab_projection"]


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )


class _VocabProjection(torch.autograd.Function):
    """x @ W^T + b for a wide W (K, h), computed in blocks of W's rows on the CPU.

    One MKL GEMM writing a (N, K) row-major output with K ~ 50k runs ~30 % below its usual rate
    (measured: tiny, N = 256, K = 50258, one thread); blocks of a few hundred vocabulary rows keep
    the weight block in cache. Same result bit for bit: every logit is the same length-h dot
    product. The backward is the plain one (its GEMMs already run at full rate).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        k, h = weight.shape
        flat = x.reshape(-1, h)  # (N, h)
        out = flat.new_empty(flat.shape[0], k)  # (N, K)
        block = max(256, min(1024, 2**17 // h))  # ~0.5 MB of float32 weights
        for start in range(0, k, block):
            end = min(start + block, k)
            torch.addmm(bias[start:end], flat, weight[start:end].t(), out=out[:, start:end])
        return out.view(*x.shape[:-1], k)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        k, h = weight.shape
        flat_grad = grad.reshape(-1, k)  # (N, K)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(flat_grad, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(flat_grad.t(), x.reshape(-1, h))
        if ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b


def vocab_projection(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear(x, weight, bias)``, x (..., h), weight (K, h), bias (K,) -> (..., K).

    On the CPU outside autocast and compile, for K >= 4096 and one dtype, computed blockwise.
    """
    if (
        x.device.type != "cpu"
        or torch.compiler.is_compiling()
        or _autocast_on("cpu")
        or not (x.dtype == weight.dtype == bias.dtype)
        or weight.shape[0] < 4096
    ):
        return F.linear(x, weight, bias)
    return _VocabProjection.apply(x, weight, bias)
