"""The output (vocabulary) projection x @ W^T + b, computed blockwise on the CPU for speed, and
the padding of its rows.

The DiT's projection holds ``output_rows(config)`` rows: K rounded up to a multiple of
``OUTPUT_ROW_MULTIPLE`` (aligned GEMM rows), or exactly K when tied to the (K, h) embedding. Rows
past K are never read. A state dict storing K rows (older checkpoints, converted reference
weights) is padded with zero rows by ``pad_output_rows`` before it is checked and loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff.models.config import DiTConfig

__all__ = [
    "OUTPUT_ROW_MULTIPLE",
    "output_rows",
    "pad_output_rows",
    "pad_rows",
    "padded_rows",
    "vocab_projection",
]

OUTPUT_ROW_MULTIPLE = 128
"""The output projection's rows are padded to a multiple of this (aligned GEMM rows)."""

_OUTPUT_PREFIX = "final.linear."
"""Where the DiT's state dict holds the output projection (``weight`` (R, h), ``bias`` (R,))."""


def padded_rows(vocab_size: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``OUTPUT_ROW_MULTIPLE``."""
    return -(-vocab_size // OUTPUT_ROW_MULTIPLE) * OUTPUT_ROW_MULTIPLE


def output_rows(config: DiTConfig) -> int:
    """Rows of the DiT's output projection: ``padded_rows(K)``, or K when tied to the embedding
    (the projection is then the (K, h) embedding itself)."""
    return config.vocab_size if config.tie_weights else padded_rows(config.vocab_size)


def pad_rows(state: MutableMapping[str, Tensor], prefix: str, rows: int, vocab_size: int) -> None:
    """In place: ``prefix + "weight"`` (K, h) and ``prefix + "bias"`` (K,) stored with exactly K =
    ``vocab_size`` rows get zero rows appended up to ``rows``; anything else is left as it is."""
    for name in (prefix + "weight", prefix + "bias"):
        value = state.get(name)
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == vocab_size:
            if rows > vocab_size:
                pad = value.new_zeros((rows - vocab_size, *value.shape[1:]))
                state[name] = torch.cat([value, pad])


def pad_output_rows(state: Mapping[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """A copy of a DiT's ``state`` with the output projection padded to ``output_rows(config)``
    rows (a K-row projection gets zero rows; a padded one is returned as it is)."""
    out = dict(state)
    pad_rows(out, _OUTPUT_PREFIX, output_rows(config), config.vocab_size)
    return out


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )


class _VocabProjection(torch.autograd.Function):
    """x @ W[:K]^T + b[:K] for a wide W (R, h), computed in blocks of W's rows on the CPU.

    One MKL GEMM writing a (N, K) row-major output with K ~ 50k runs ~30 % below its usual rate
    (measured: tiny, N = 256, K = 50258, one thread); blocks of a few hundred vocabulary rows keep
    the weight block in cache. Same result bit for bit: every logit is the same length-h dot
    product. The output is a contiguous (N, K) buffer: a view with row stride R would make the
    CPU softmax / cross-entropy that follow copy it. The backward is the plain one (its GEMMs
    already run at full rate).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.k = k
        rows, h = weight.shape
        flat = x.reshape(-1, h)  # (N, h)
        out = flat.new_empty(flat.shape[0], k)  # (N, K), contiguous
        block = max(256, min(1024, 2**17 // h))  # ~0.5 MB of float32 weights
        for start in range(0, k, block):
            end = min(start + block, k)
            torch.addmm(bias[start:end], flat, weight[start:end].t(), out=out[:, start:end])
        return out.view(*x.shape[:-1], k)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        k = ctx.k
        rows, h = weight.shape
        flat_grad = grad.reshape(-1, k)  # (N, K)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(flat_grad, weight[:k]).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_zeros(rows, h)  # the padding rows get no gradient
            torch.mm(flat_grad.t(), x.reshape(-1, h), out=grad_w[:k])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros_like(weight[:, 0])
            grad_b[:k] = flat_grad.sum(0)
        return grad_x, grad_w, grad_b, None


def vocab_projection(
    x: Tensor, weight: Tensor, bias: Tensor, vocab_size: int | None = None
) -> Tensor:
    """``F.linear(x, weight, bias)[..., :vocab_size]``: x (..., h), weight (R, h), bias (R,) ->
    (..., K), K = ``vocab_size`` (default R). Rows of ``weight`` past K are padding.

    The product runs over all R rows, whose count is a multiple of 128 in the DiT: aligned GEMM
    rows, and the K logits are a view of it (row stride R). On the CPU outside autocast and
    compile, for K >= 4096 and one dtype, it is computed blockwise over the first K rows only,
    into a contiguous (..., K) buffer.
    """
    k = weight.shape[0] if vocab_size is None else vocab_size
    if (
        x.device.type != "cpu"
        or torch.compiler.is_compiling()
        or _autocast_on("cpu")
        or not (x.dtype == weight.dtype == bias.dtype)
        or k < 4096
    ):
        out = F.linear(x, weight, bias)
        return out if k == weight.shape[0] else out[..., :k]
    return _VocabProjection.apply(x, weight, bias, k)
