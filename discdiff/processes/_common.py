"""What the processes share: the signal-level annotation, dtype promotion and argument checks."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

LevelTensor = Float[Tensor, "b #l"]
"""A signal level per sequence (B, 1) or per token (B, L)."""


def float_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The promoted floating dtype of ``dtypes``, at least float32."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def check_index(value: int, name: str, vocab_size: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be an integer in [0, {vocab_size}), got {value!r}")


def check_tau(tau: float) -> None:
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite temperature > 0, got {tau!r}")


def survivors(x_0: Tensor, alpha_t: Tensor, generator: torch.Generator | None) -> Tensor:
    """A (B, L) boolean draw: True with probability alpha_t (the token survives)."""
    dtype = float_dtype(alpha_t.dtype)
    u = torch.rand(x_0.shape, generator=generator, device=x_0.device, dtype=dtype)
    return u < alpha_t.to(dtype)
