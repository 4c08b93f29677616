"""The time grid of a sampling run, and how it ends (the tail).

The tail (the paper's protocol and two variants): ``"greedy"`` takes N ancestral steps on
linspace(1, t_min, N + 1), then one more denoiser call at t_min whose argmax x_hat is the output
(N + 1 network calls); ``"map"`` makes the same call and returns the mode of the denoising
posterior q(z_0 | z_{t_min}, x_hat); ``"none"`` takes N steps down to t = 0 (N calls, the exact
ancestral law).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from discdiff.checks import check_schedule
from discdiff.samplers.correctors import alpha_at
from discdiff.schedules import Schedule
from discdiff.typing import as_float, check_count

__all__ = ["T_MIN", "TAILS", "Interval", "Tail", "TimeGrid", "check_tail", "nfe"]

Tail = Literal["greedy", "map", "none"]
TAILS = ("greedy", "map", "none")
T_MIN = 1e-5
"""The last time of a grid that ends with a tail call (the reference code's t_min)."""


def nfe(steps: int, tail: Tail) -> int:
    """Network calls of a ``steps``-step uniform sample: steps + 1 with a tail call, else steps.

    (The masked sampler's cache can save calls; its ``StepRecord.nfe`` counts the real ones.)
    """
    check_tail(tail)
    return check_count(steps, "steps") + (tail != "none")


class Interval(NamedTuple):
    """One reverse step t -> s < t of a grid and its signal levels alpha_t <= alpha_s."""

    t: float
    s: float
    alpha_t: float
    alpha_s: float


@dataclass(frozen=True)
class TimeGrid:
    """The N + 1 decreasing times t_0 = 1 > ... > t_N of a sampling run and their alpha_t.

    Build one with ``TimeGrid.build``; ``alpha`` at t = 0 is exactly 1 (clean).
    """

    t: tuple[float, ...]
    alpha: tuple[float, ...]

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def interval(self, i: int) -> Interval:
        """Step ``i`` (from 0) of the grid: t_i -> t_{i+1} with their alpha."""
        return Interval(self.t[i], self.t[i + 1], self.alpha[i], self.alpha[i + 1])

    @staticmethod
    def build(
        schedule: Schedule,
        steps: int,
        *,
        tail: Tail = "greedy",
        times: Sequence[float] | Tensor | None = None,
        t_min: float = T_MIN,
    ) -> TimeGrid:
        """A grid of ``steps`` steps: ``times`` if given (steps + 1 strictly decreasing times in
        [0, 1], any sequence or tensor), else linspace(1, t_end, steps + 1) with t_end = 0 for
        ``tail="none"`` and ``t_min`` for a tail that makes one more call there."""
        steps = check_count(steps, "steps")
        check_tail(tail)
        check_schedule(schedule)  # the rule the diffusion objects apply in training too
        if times is None:
            t_min = as_float(t_min, "t_min")
            if not 0.0 < t_min < 1.0:
                raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
            end = 0.0 if tail == "none" else t_min
            grid = torch.linspace(1.0, end, steps + 1, dtype=torch.float64)
        else:
            grid = _as_times(times)
            if grid.numel() != steps + 1:
                raise ValueError(
                    f"time_grid has {grid.numel()} points; steps={steps} needs steps + 1 = "
                    f"{steps + 1}"
                )
        values = grid.tolist()
        return TimeGrid(tuple(values), tuple(alpha_at(schedule, t) for t in values))


def _as_times(times: Any) -> Tensor:
    try:
        grid = torch.as_tensor(
            times.detach().cpu() if isinstance(times, Tensor) else list(times),
            dtype=torch.float64,
        ).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"time_grid must be a sequence or tensor of times, got {type(times).__name__}"
        ) from None
    if not bool(torch.isfinite(grid).all()) or bool((grid < 0).any() | (grid > 1).any()):
        raise ValueError("time_grid must hold finite times in [0, 1]")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time_grid must be strictly decreasing (from noise at t=1 to data at t=0)")
    return grid


def check_tail(tail: Any) -> None:
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
