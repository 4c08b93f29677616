"""The one sampling loop: ``run(predict, step, grid, z, ...)``.

In the manner of k-diffusion and diffusers the loop knows nothing of the process, of guidance or
of filters: each step it asks ``predict`` (a ``Predictor``: the denoiser calls, guidance, the
cache) for a ``Prediction`` of z_t, hands it to ``step`` (``UniformStep``, ``MaskedStep`` or any
callable of the same form) with the step's ``Interval``, clamps the ``Prompt`` and reports a
``StepRecord``; then an optional ``Finish`` (the tail call at the grid's last time). The
samplers ``sample_uniform`` / ``sample_masked`` build these parts from their keywords once and
call ``run``; a sampler over blocks can call it once per block with the same parts.

Example (a Ψ sample of 8 rows of 64 tokens, 16 steps, then the greedy tail)::

    filt = Filter(top_p=0.9)
    grid = TimeGrid.build(schedule, 16)
    predict = Predictor(denoiser, vocab_size)
    z_1 = torch.randint(vocab_size, (8, 64), generator=gen)
    z_0 = run(predict, UniformStep(kappa=0.9, filter=filt), grid, z_1,
              finish=Finish("greedy", filt), generator=gen)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Int
from torch import Tensor

from discdiff.samplers.categorical import Source
from discdiff.samplers.grid import Interval, TimeGrid
from discdiff.samplers.parts import Finish, Prompt
from discdiff.samplers.predict import Predict, Prediction
from discdiff.typing import trusted

__all__ = ["Callback", "Step", "StepRecord", "run"]


@dataclass(frozen=True)
class StepRecord:
    """What a ``callback`` sees after each denoiser call of a sampling run.

    ``step`` counts reverse steps from 0 (the tail call has step = N); the call was at time
    ``t`` and the tokens are now at time ``s`` (``z_s``, (B, L)); ``logits`` (B, L, K) is what
    the denoiser returned (the cached prediction when the masked sampler reused it; the guided
    log-probabilities under guidance); ``nfe`` the denoiser calls so far.
    """

    step: int
    t: float
    s: float
    z_s: Tensor
    logits: Tensor
    nfe: int


Callback = Callable[[StepRecord], None]


class Step(Protocol):
    """One reverse step: (prediction of z_t, z_t (B, L), the step t -> s, randomness) -> z_s.

    It returns a new tensor and leaves z_t as it was: a caching ``Predictor`` compares the next
    tokens with the ones it predicted for."""

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]: ...


def _progress(total: int, enabled: bool) -> Iterator[int]:
    if not enabled:
        return iter(range(total))
    from tqdm.auto import tqdm

    return iter(tqdm(range(total), desc="sampling", unit="step"))


@torch.no_grad()
def run(
    predict: Predict,
    step: Step,
    grid: TimeGrid,
    z: Int[Tensor, "b l"],
    *,
    finish: Finish | None = None,
    prompt: Prompt | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    generator: Source = None,
) -> Int[Tensor, "b l"]:
    """Run the reverse process from ``z`` (B, L) at t = grid.t[0] along ``grid``; return the
    tokens (B, L) after the last step, or after ``finish`` (one more prediction at grid.t[-1]).

    Per step i: pred = predict(z, alpha_t); z = step(pred, z, grid.interval(i), generator),
    then ``prompt`` (if any) clamps its positions; ``callback`` gets a ``StepRecord``. ``z``
    should already hold the prompt. The parts are trusted: they checked their fields when they
    were built, and the steps skip re-checking their inputs; the denoiser's output is still
    checked. Randomness only from ``generator`` (a ``torch.Generator``, a ``RowStream`` or None
    for torch's global one), drawn in the order the steps document. Runs under
    ``torch.no_grad()``.
    """
    with trusted():
        for i in _progress(grid.steps, progress):
            at = grid.interval(i)
            pred = predict(z, at.alpha_t)
            z = step(pred, z, at, generator)
            if prompt is not None:
                z = prompt(z)
            if callback is not None:
                callback(StepRecord(i, at.t, at.s, z, pred.shown(), predict.calls))
        if finish is None:
            return z
        pred = predict(z, grid.alpha[-1])
        z = finish(pred, z, grid.alpha[-1])
        if prompt is not None:
            z = prompt(z)
        if callback is not None:
            callback(StepRecord(grid.steps, grid.t[-1], 0.0, z, pred.shown(), predict.calls))
    return z
