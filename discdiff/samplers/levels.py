"""Signal-level arguments of the one-step kernels: alpha_s, alpha_t, kappa, sigma.

A level is a Python number, a one-element tensor, or a tensor of shape (B, 1) / (B, L). The
kernels work on flattened (B*L,) rows, so a tensor level is broadcast to (B, L) and flattened
in float64; a number stays a float (no tensor, no device traffic).
"""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff.numerics import ratio  # noqa: F401  (alpha_ts: one formula, re-exported)
from discdiff.typing import check_range, checks_enabled, reject_if

Level = float | Tensor
"""A signal level as the steps take it: ``discdiff.typing.Level`` (a number, or a tensor that
broadcasts as (B, 1) / (B, L)), or the flattened (B·L,) levels of a trusted run."""


def level(x: Level, b: int, ln: int, name: str, like: Tensor) -> float | Tensor:
    """A signal level in [0, 1] as a float, or a float64 tensor broadcast to (B, L)."""
    if isinstance(x, Tensor) and x.numel() == 1:
        x = float(x)
    if not isinstance(x, Tensor):
        x = float(x)
        check_range(x, name, 0.0, 1.0)
        return x
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a float or a tensor of shape (B, 1) or (B, L), got {tuple(x.shape)}"
        )
    try:
        x = x.to(device=like.device).expand(b, ln)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to (B, L) = ({b}, {ln})"
        ) from None
    check_range(x, name, 0.0, 1.0)
    return x


def check_ordered(a_s: float | Tensor, a_t: float | Tensor) -> None:
    """alpha_s >= alpha_t: a reverse step t -> s gains signal."""
    if not checks_enabled():
        return
    message = "alpha_s must be >= alpha_t (s < t: the reverse step gains signal)"
    if isinstance(a_s, float) and isinstance(a_t, float):
        if a_s < a_t:
            raise ValueError(message)
        return
    reject_if(torch.as_tensor(a_s) < torch.as_tensor(a_t), message)


def flat(x: float | Tensor) -> float | Tensor:
    """A level as a float, or as a float64 (B*L,) tensor."""
    return x if isinstance(x, float) else x.reshape(-1).to(torch.float64)


def rows(x: float | Tensor, sl: slice) -> float | Tensor:
    """The rows ``sl`` of a flattened level (a float is the same for every row)."""
    return x if isinstance(x, float) else x[sl]
