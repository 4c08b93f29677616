"""One decoder (an exact sampler or a decoding policy) run on a denoiser, with what each sample
cost: ``decode(Decoding(...), denoiser, n, length, ...)`` -> ``Decoded``.

A ``Decoding`` names a step object (``UniformStep``, ``MaskedStep`` or a policy of
``discdiff.samplers.policies``), a step count, a tail and what the step reads: the exact
uniform steps read x_hat, ``EntropyBoundStep`` was designed for the posterior p(x | z_t) of a
model trained with cross-entropy, so the ``Predictor`` converts a Duo model's x_hat for it
(``Predictor(..., reads="posterior")``: exactly, at the level in float64). ``decode`` builds
the parts as ``sample_uniform`` / ``sample_masked`` do (the same z_1 draw, grid, ``Predictor``
and ``Finish``: with ``UniformStep`` / ``MaskedStep`` the samples are theirs for the same
generator) and calls ``discdiff.samplers.loop.run``.

What a sample costs, ``Decoded.nfe`` (N,): the denoiser calls it would have needed drawn alone.
For the uniform process that is every call (nothing tells it it is done). For the masked
process, a call counts for a row only while the row still holds a mask and, when predictions
are cached (a denoiser that is not time-conditioned), only if the row changed since its last
call: a row that is done, or that a step left as it was, costs nothing, although a batch runs
until its slowest row. Tokens per forward pass = total tokens / total calls = L / mean NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.parameterization import Parameterization, check_parameterization
from discdiff.samplers.categorical import randint
from discdiff.samplers.grid import Tail, TimeGrid
from discdiff.samplers.loop import Step, StepRecord, run
from discdiff.samplers.parts import Filter, Finish
from discdiff.samplers.predict import Predictor
from discdiff.schedules import Schedule
from discdiff.typing import Denoiser, check_count

__all__ = ["Decoded", "Decoding", "decode"]

TAILS = ("none", "greedy", "map")


@dataclass(frozen=True)
class Decoding:
    """One way to decode: a ``name`` for tables, the ``step`` object, ``steps`` reverse steps
    on the schedule's linspace grid for ``tail`` ("none": down to t = 0; "greedy" / "map": one
    more call at t_min, ``TimeGrid.build``), and ``reads``, what the step's logits must mean
    for the uniform process: "x_hat" (the exact steps) or "posterior" (p(x | z_t), which
    ``EntropyBoundStep`` reads). The masked process reads the denoiser as it is (at a masked
    position its x_hat is the posterior), so ``reads`` stays "x_hat" there."""

    name: str
    step: Step
    steps: int
    tail: Tail = "none"
    reads: Parameterization = "x_hat"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check_count(self.steps, "steps"))
        if self.tail not in TAILS:
            raise ValueError(f"tail (Decoding.tail) must be one of {TAILS}, got {self.tail!r}")
        check_parameterization(self.reads, "reads (Decoding.reads)")


@dataclass(frozen=True)
class Decoded:
    """The ``samples`` (N, L) int64 of a ``decode`` and the denoiser calls each one cost,
    ``nfe`` (N,) float64 (module docstring)."""

    samples: Int[Tensor, "n l"]
    nfe: Float[Tensor, " n"]

    @property
    def mean_nfe(self) -> float:
        """NFE per sample, averaged over the samples."""
        return float(self.nfe.mean())

    @property
    def tokens_per_forward(self) -> float:
        """Tokens generated per denoiser call: total tokens / total calls = L / mean NFE."""
        total = float(self.nfe.sum())
        return self.samples.numel() / total if total > 0 else math.inf


class _Calls:
    """A callback counting the calls each row needed (module docstring): the row of the z a
    call saw holds a mask (masked process) and, with ``cache``, differs from the row's z at its
    last counted call."""

    def __init__(self, z: Tensor, mask_id: int | None, cache: bool) -> None:
        self.z, self.mask_id, self.cache = z, mask_id, cache
        self.last = torch.full_like(z, -1)  # no row has been called yet
        self.nfe = torch.zeros(z.shape[0], dtype=torch.float64)

    def __call__(self, record: StepRecord) -> None:
        z = self.z  # what this call saw
        need = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        if self.mask_id is not None:
            need &= (z == self.mask_id).any(-1)
        if self.cache:
            need &= (z != self.last).any(-1)
            self.last = torch.where(need.unsqueeze(-1), z, self.last)
        self.nfe += need.cpu().double()
        self.z = record.z_s


def _parts(
    decoding: Decoding, denoiser: Denoiser, vocab_size: int, mask_id: int | None,
    time_conditioned: bool,
) -> tuple[Predictor, Finish | None, bool]:  # fmt: skip
    """The predictor, the tail and whether predictions are cached, as the samplers build them."""
    tail = decoding.tail
    if mask_id is not None:
        if decoding.reads != "x_hat":
            raise ValueError(f"Decoding {decoding.name!r}: reads='posterior' is for the uniform "
                             "process; a masked model's x_hat is already the posterior at a "
                             "masked position: leave reads='x_hat'")  # fmt: skip
        cache = not time_conditioned
        predict = Predictor(denoiser, vocab_size, time_conditioned=time_conditioned,
                            cache=cache, convert=False)  # fmt: skip
        return predict, None if tail == "none" else Finish("greedy", Filter(), mask_id), cache
    predict = Predictor(denoiser, vocab_size, reads=decoding.reads)
    filt = getattr(decoding.step, "filter", Filter())
    return predict, None if tail == "none" else Finish(tail, filt), False


@torch.no_grad()
def decode(
    decoding: Decoding,
    denoiser: Denoiser,
    num_samples: int,
    length: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    mask_id: int | None = None,
    time_conditioned: bool = False,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Decoded:
    """``num_samples`` samples (N, ``length``) of ``decoding`` on ``denoiser`` and their NFE.

    ``mask_id`` None: the uniform process (z_1 uniform on the ``vocab_size`` = K ids, drawn as
    ``sample_uniform`` draws it); else the masked process (z_1 all ``mask_id``; ``vocab_size``
    counts the mask, the denoiser's K + 1, as in ``sample_masked``), with the prediction
    cached while a batch is unchanged unless ``time_conditioned``. ``batch_size`` rows at a
    time (default: all), one ``generator`` for every batch: the same call gives the same
    samples. The step's own counters (a policy's ``tally``) add up over the batches.
    """
    check_count(num_samples, "num_samples")
    check_count(length, "length")
    size = num_samples if batch_size is None else check_count(batch_size, "batch_size")
    if mask_id is not None and not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id!r} is outside [0, vocab_size={vocab_size}): for the "
                         "masked process vocab_size counts the mask (the denoiser's K + 1)")
    device = generator.device if generator is not None else torch.device("cpu")
    grid = TimeGrid.build(schedule, decoding.steps, tail=decoding.tail)
    samples, nfe = [], []
    for lo in range(0, num_samples, size):
        n = min(size, num_samples - lo)
        predict, finish, cache = _parts(decoding, denoiser, vocab_size, mask_id,
                                        time_conditioned)  # fmt: skip
        if mask_id is None:
            z = randint(vocab_size, n * length, generator, device).view(n, length)
        else:
            z = torch.full((n, length), mask_id, dtype=torch.long, device=device)
        calls = _Calls(z, mask_id, cache)
        out = run(predict, decoding.step, grid, z, finish=finish, callback=calls,
                  generator=generator)  # fmt: skip
        samples.append(out.cpu())
        nfe.append(calls.nfe)
    return Decoded(torch.cat(samples), torch.cat(nfe))
