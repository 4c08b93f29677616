"""Hypothesis strategies for property tests of discrete diffusion components.

Vocabulary sizes, schedules (the built-ins and random valid ones), signal-level pairs
alpha_s >= alpha_t, token batches, logits with extreme values and -inf classes, prompts and
masks, and sampler option combinations (``Options``) for ``check_sampler`` / ``exact_law``.

The module imports without hypothesis (so the API reference builds anywhere); each strategy
imports it when called and raises ImportError naming the fix (``pip install
'discdiff[testing]'``) when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discdiff.schedules import CosineSchedule, LinearSchedule, LogLinearSchedule
from discdiff.testing.exact import Options

__all__ = [
    "PowerSchedule",
    "alpha_pairs",
    "builtin_schedules",
    "logits",
    "prompt_batches",
    "prompts",
    "sampler_options",
    "schedules",
    "token_batches",
    "vocab_sizes",
]


def _st() -> Any:
    """``hypothesis.strategies``, or ImportError naming the extra that installs it."""
    try:
        from hypothesis import strategies
    except ImportError as err:
        raise ImportError(
            "discdiff.testing.strategies needs hypothesis: pip install 'discdiff[testing]'"
        ) from err
    return strategies


@dataclass(frozen=True)
class PowerSchedule:
    """alpha_t = 1 - (1 - eps) t^p (p >= 1): a valid schedule with an exact derivative and
    inverse, to draw schedules other than the built-ins."""

    power: float = 2.0
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.power >= 1 and 0 <= self.eps < 1):
            raise ValueError(f"PowerSchedule needs power >= 1 and eps in [0, 1), got "
                             f"power={self.power}, eps={self.eps}")  # fmt: skip

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t**self.power

    def dalpha_dt(self, t: Tensor) -> Tensor:
        return -(1 - self.eps) * self.power * t ** (self.power - 1)

    def inverse(self, alpha: Tensor) -> Tensor:
        return ((1 - alpha) / (1 - self.eps)).clamp_min(0) ** (1 / self.power)


def vocab_sizes(min_value: int = 2, max_value: int = 8) -> Any:
    """Vocabulary sizes K in [min_value, max_value] (K <= 8 keeps K^L enumerable)."""
    return _st().integers(min_value, max_value)


def builtin_schedules() -> Any:
    """The library's schedules with alpha(0) = 1 (log-linear, cosine, linear from sigma = 0)."""
    st = _st()
    eps = st.sampled_from([1e-3, 1e-2, 0.1])
    return st.one_of(st.builds(LogLinearSchedule, eps=eps), st.builds(CosineSchedule, eps=eps),
                     st.builds(LinearSchedule, sigma_min=st.just(0.0),
                               sigma_max=st.floats(1.0, 20.0)))  # fmt: skip


def schedules() -> Any:
    """Built-in schedules and random valid ones (``PowerSchedule``)."""
    st = _st()
    power = st.builds(PowerSchedule, power=st.floats(1.0, 4.0), eps=st.floats(0.0, 0.1))
    return st.one_of(builtin_schedules(), power)


def alpha_pairs(min_gap: float = 0.0) -> Any:
    """(alpha_s, alpha_t) floats with 0 <= alpha_t <= alpha_s - min_gap <= 1 (s < t), the
    endpoints 0 and 1 included."""
    st = _st()
    unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    pair = st.tuples(unit, unit).map(lambda p: (max(p), min(p)))
    return pair.filter(lambda p: p[0] - p[1] >= min_gap)


def token_batches(vocab_size: int, max_batch: int = 4, max_length: int = 6) -> Any:
    """int64 ids (B, L) in [0, vocab_size), B in [1, max_batch], L in [1, max_length]."""
    st = _st()

    def build(shape: tuple[int, int]) -> Any:
        return st.lists(st.integers(0, vocab_size - 1), min_size=shape[0] * shape[1],
                        max_size=shape[0] * shape[1]).map(
            lambda v: torch.tensor(v, dtype=torch.long).view(shape))  # fmt: skip

    return st.tuples(st.integers(1, max_batch), st.integers(1, max_length)).flatmap(build)


def logits(shape: tuple[int, ...], *, extreme: bool = True, neg_inf: bool = True,
           dtype: torch.dtype = torch.float32) -> Any:  # fmt: skip
    """Logits of ``shape`` (..., K): moderate values, with ``extreme`` ones (+-1e4, +-80) and
    ``neg_inf`` classes (-inf); every row keeps at least one finite class."""
    st = _st()
    k = shape[-1]
    n = 1
    for size in shape:
        n *= size
    values = [st.floats(-10.0, 10.0)]
    if extreme:
        values.append(st.sampled_from([-1e4, 1e4, -80.0, 80.0]))
    if neg_inf:
        values.append(st.just(float("-inf")))

    def build(v: list[float]) -> Tensor:
        x = torch.tensor(v, dtype=dtype).view(-1, k)
        dead = torch.isinf(x).all(-1)
        x[dead, 0] = 0.0  # a row of -inf only is no law
        return x.view(shape)

    return st.lists(st.one_of(*values), min_size=n, max_size=n).map(build)


def prompts(vocab_size: int, length: int, *, min_free: int = 1) -> Any:
    """A prompt as ``Options.prompt`` reads it: one entry per position, a token id or None
    (free), at least ``min_free`` positions free (a prefix, a middle, an infill: any pattern)."""
    st = _st()
    entry = st.one_of(st.none(), st.integers(0, vocab_size - 1))
    return st.lists(entry, min_size=length, max_size=length).filter(
        lambda p: sum(v is None for v in p) >= min_free).map(tuple)  # fmt: skip


def _prompt_tensors(rows: list[tuple[int | None, ...]]) -> tuple[Tensor, Tensor]:
    tokens = torch.tensor([[0 if v is None else v for v in row] for row in rows])
    return tokens, torch.tensor([[v is not None for v in row] for row in rows])


def prompt_batches(vocab_size: int, max_batch: int = 4, max_length: int = 6) -> Any:
    """(prompt (B, L) int64 ids, prompt_mask (B, L) bool) as the samplers take them: each row
    its own pattern of given positions, at least one position free per row."""
    st = _st()

    def build(shape: tuple[int, int]) -> Any:
        b, length = shape
        rows = st.lists(prompts(vocab_size, length), min_size=b, max_size=b)
        return rows.map(_prompt_tensors)

    return st.tuples(st.integers(1, max_batch), st.integers(1, max_length)).flatmap(build)


def sampler_options(
    vocab_size: int,
    length: int,
    *,
    classes: int = 1,
    processes: tuple[str, ...] = ("uniform", "masked"),
    max_steps: int = 4,
) -> Any:
    """``Options`` over process x tail x filter x kappa (uniform) / remasking (masked) x
    guidance (with ``classes`` > 1) x prompt x steps, for a toy of ``vocab_size`` and
    ``length``. ``Options.block_size`` stays None until block diffusion is enumerated."""
    st = _st()

    @st.composite
    def draw(d: Any) -> Options:
        process = d(st.sampled_from(processes))
        tail = d(st.sampled_from(["none", "greedy", "map"] if process == "uniform"
                                 else ["none", "greedy"]))  # fmt: skip
        kw: dict[str, Any] = {"process": process, "tail": tail,
                              "steps": d(st.integers(1, max_steps))}  # fmt: skip
        corrector = d(st.one_of(st.none(), st.sampled_from([0.0, 0.3, 0.7, 1.0])))
        kw["kappa" if process == "uniform" else "remask"] = corrector
        kw["top_k"] = d(st.one_of(st.none(), st.integers(1, vocab_size)))
        kw["top_p"] = d(st.one_of(st.none(), st.sampled_from([0.5, 0.8, 0.95])))
        if classes > 1:
            kw["label"] = d(st.integers(0, classes - 1))
            kw["guidance_scale"] = d(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0])))
        kw["prompt"] = d(st.one_of(st.none(), prompts(vocab_size, length)))
        return Options(**kw)

    return draw()
