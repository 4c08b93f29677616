"""Decoding policies practitioners use, as step objects beside the exact ones.

Each is called like ``UniformStep`` / ``MaskedStep`` — ``(pred, z_t, at, generator) -> z_s`` —
so ``discdiff.samplers.loop.run`` drives it. None of them samples the model's law: each trades
the exact reverse step for fewer network calls (NFE) by committing several tokens per call
from per-token statistics (entropy, confidence) that ignore how the tokens depend on each other.

- ``EntropyBoundStep`` (uniform process; the default of transformers' DiffusionGemma
  ``generate``): draw a candidate per position from the tempered logits, keep the k
  lowest-entropy candidates with sum(entropy) - max(entropy) <= bound, renoise the rest
  uniformly.
- ``ConfidenceStep`` (masked process; Fast-dLLM's parallel decoding): unmask every masked
  position whose confidence is >= tau, at least the most confident one per row.
- ``LowConfidenceStep`` (masked process; LLaDA's low-confidence remasking): unmask the n most
  confident masked positions, n from the step's share of the remaining masks.

Each step counts what it does in its ``tally`` (a ``Tally``: calls and tokens committed), so a
table can report tokens per forward pass beside NFE. The logits a policy reads are the
model's per-token beliefs about the clean token as the denoiser returned them (for a model
trained with cross-entropy, the posterior p(x | z_t)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from discdiff.samplers.categorical import Source
from discdiff.samplers.grid import Interval
from discdiff.samplers.predict import Prediction
from discdiff.typing import as_float, check_count

__all__ = [
    "ConfidenceStep",
    "EntropyBoundStep",
    "LowConfidenceStep",
    "Tally",
    "entropy_bound_accept",
    "low_confidence_counts",
]


class Tally:
    """What a policy did: ``calls`` steps taken (one denoiser call each) and ``committed``
    tokens committed by them (accepted or unmasked). ``per_call`` = committed / calls.

    The count stays on the tokens' device while the steps run (no host sync per step) and is
    read back when ``committed`` is asked for."""

    def __init__(self) -> None:
        self.calls = 0
        self._committed: Tensor | int = 0

    def __repr__(self) -> str:
        return f"Tally(calls={self.calls}, committed={self.committed})"

    @property
    def committed(self) -> int:
        return int(self._committed)

    @property
    def per_call(self) -> float:
        return self.committed / self.calls if self.calls else 0.0

    def add(self, committed: Tensor) -> None:
        self.calls += 1
        self._committed = self._committed + committed.sum()

    def reset(self) -> None:
        self.calls, self._committed = 0, 0


def _unguided(pred: Prediction, name: str) -> Tensor:
    if pred.uncond is not None:
        raise ValueError(
            f"{name} reads one set of logits; it does not combine guided predictions: build the "
            "Predictor without guidance"
        )
    return pred.logits


def _torch_generator(generator: Source, name: str) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{name} draws with torch.multinomial / torch.randint: pass generator= a "
            f"torch.Generator or None, not {type(generator).__name__} (seed= is not supported)"
        )
    return generator


# --------------------------------------------------------------------------- entropy bound


def entropy_bound_accept(entropy: Float[Tensor, "b l"], bound: float) -> Bool[Tensor, "b l"]:
    """The positions (B, L) accepted by the entropy bound: sorting each row's entropies
    ascending, the first k with sum_{i<=k} H_i - max_{i<=k} H_i <= ``bound`` (the left side
    upper-bounds the mutual information among the k tokens). The lowest-entropy position is
    always accepted (its left side is 0)."""
    sorted_h, order = torch.sort(entropy, dim=-1, descending=False)
    # sorted ascending, so the running maximum of the first k is the k-th entropy itself
    keep = torch.cumsum(sorted_h, dim=-1) - sorted_h <= bound
    return torch.zeros_like(keep).scatter(-1, order, keep)


@dataclass(frozen=True)
class EntropyBoundStep:
    """Entropy-bounded acceptance with renoising (uniform process).

    Per step t -> s: the logits are divided by a temperature annealed linearly in t,
    T = temperature_min + (temperature_max - temperature_min) t; a candidate per position is
    drawn from softmax(logits / T); the candidates of ``entropy_bound_accept`` (on the
    entropies of softmax(logits / T)) are kept and every other position gets a uniform random
    token. At the grid's last step (alpha_s = 1) the result is argmax(logits / T) instead, the
    block ``DiffusionGemma.generate`` appends. With a linspace grid of N steps from t = 1 to 0,
    T is transformers' ``LinearTemperatureScheduleLogitsProcessor`` at cur_step = N t.

    Randomness, in order: ``torch.multinomial`` over the (B*L, K) float32 probabilities, then
    ``torch.randint(0, K, (B, L))``, from ``generator`` (a ``torch.Generator`` or None for
    torch's global one): the draws of transformers' ``EntropyBoundSampler``. ``feedback``, if
    set, is called with the tempered logits (B, L, K) each step: transformers feeds those back
    as the next call's self-conditioning (``DiffusionGemmaDenoiser.carry``).

    A heuristic: the renoised positions forget what the model said about them, the accepted
    ones are drawn independently although only their total entropy bounds their dependence,
    and the temperature changes the law; nothing here is the reverse process of the model.
    The ``tally`` counts the accepted positions of each step.
    """

    entropy_bound: float = 0.1
    temperature_max: float = 0.8
    temperature_min: float = 0.4
    feedback: Callable[[Tensor], None] | None = None
    tally: Tally = field(default_factory=Tally, compare=False)

    def __post_init__(self) -> None:
        bound = as_float(self.entropy_bound, "entropy_bound")
        if not bound > 0:
            raise ValueError(f"entropy_bound must be > 0 (nats), got {bound}")
        t_hi = as_float(self.temperature_max, "temperature_max")
        t_lo = as_float(self.temperature_min, "temperature_min")
        if not 0 < t_lo <= t_hi:
            raise ValueError(
                "temperatures must satisfy 0 < temperature_min <= temperature_max, got "
                f"temperature_min={t_lo}, temperature_max={t_hi}"
            )
        object.__setattr__(self, "entropy_bound", bound)
        object.__setattr__(self, "temperature_max", t_hi)
        object.__setattr__(self, "temperature_min", t_lo)

    def tempered(self, logits: Tensor, t: float) -> Tensor:
        """logits / T(t), T in float32 as transformers computes it (same bits)."""
        frac = torch.tensor(t, dtype=torch.float32, device=logits.device)
        temperature = self.temperature_min + (self.temperature_max - self.temperature_min) * frac
        return logits / temperature

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]:
        gen = _torch_generator(generator, "EntropyBoundStep")
        logits = self.tempered(_unguided(pred, "EntropyBoundStep"), at.t)
        b, ln, k = logits.shape
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        drawn = torch.multinomial(probs.view(-1, k), num_samples=1, generator=gen).view(b, ln)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        accept = entropy_bound_accept(entropy, self.entropy_bound)
        noise = torch.randint(0, k, (b, ln), generator=gen, device=z.device)
        self.tally.add(accept)
        if self.feedback is not None:
            self.feedback(logits)
        if at.alpha_s >= 1.0:  # the last step: the block is the argmax canvas
            return logits.argmax(dim=-1)
        return torch.where(accept, drawn, noise)


# ---------------------------------------------------------------------- masked policies


def _candidates(
    logits: Tensor, mask_id: int, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """A candidate per position (B, L) and its confidence: the probability of the candidate
    under softmax(logits) with the mask class removed. temperature 0 takes the argmax (LLaDA
    and Fast-dLLM's default); otherwise a draw from softmax(logits / temperature)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if temperature == 0.0:
        x0 = probs.argmax(dim=-1)
    else:
        b, ln, k = logits.shape
        tempered = torch.softmax(logits / temperature, dim=-1).view(-1, k)
        x0 = torch.multinomial(tempered, 1, generator=generator).view(b, ln)
    return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def _top_n(confidence: Tensor, n: Tensor) -> Tensor:
    """The ``n[b]`` most confident positions of each row b (B, L) (-inf never chosen)."""
    order = confidence.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(
        order.shape[-1], device=order.device).expand_as(order))  # fmt: skip
    return (rank < n.unsqueeze(-1)) & torch.isfinite(confidence)


def low_confidence_counts(masked: Int[Tensor, " b"], alpha_s: float, alpha_t: float) -> Tensor:
    """How many of each row's ``masked`` positions a step t -> s unmasks:
    ceil(M (alpha_s - alpha_t) / (1 - alpha_t)), the masked process's expected share.

    On a linspace grid of N steps with alpha linear in t (``LogLinearSchedule``, where the share
    is (t - s) / t) this is LLaDA's schedule of M masks over N steps: floor(M / N) + 1 for the
    first M mod N steps, floor(M / N) after; all at alpha_s = 1.
    """
    if alpha_s >= 1.0 or alpha_t >= 1.0:
        return masked.clone()
    share = (alpha_s - alpha_t) / (1.0 - alpha_t)
    # the share is a ratio of float times; 1e-9 keeps an exact integer from rounding up
    return torch.ceil(masked.to(torch.float64) * share - 1e-9).clamp(min=0).to(masked.dtype)


@dataclass(frozen=True)
class _MaskedPolicy:
    mask_id: int
    temperature: float = 0.0

    def _check(self, name: str) -> None:
        object.__setattr__(self, "mask_id", check_count(self.mask_id, "mask_id", minimum=0))
        temperature = as_float(self.temperature, "temperature")
        if temperature < 0:
            raise ValueError(f"temperature ({name}.temperature) must be >= 0, got {temperature}")
        object.__setattr__(self, "temperature", temperature)

    def _scored(
        self, pred: Prediction, z: Tensor, generator: Source
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Candidates (B, L), their confidences (-inf where z is not masked) and the mask."""
        name = type(self).__name__
        gen = _torch_generator(generator, name)
        x0, conf = _candidates(_unguided(pred, name), self.mask_id, self.temperature, gen)
        masked = z == self.mask_id
        return x0, torch.where(masked, conf, -math.inf), masked

    def _commit(self, z: Tensor, x0: Tensor, chosen: Tensor, tally: Tally) -> Tensor:
        tally.add(chosen)
        return torch.where(chosen, x0, z)


@dataclass(frozen=True)
class ConfidenceStep(_MaskedPolicy):
    """Confidence-threshold parallel decoding (Fast-dLLM), masked process.

    Per step: a candidate per masked position (argmax, or a draw at ``temperature`` > 0) and
    its confidence p(candidate); every masked position with confidence >= ``threshold`` is
    unmasked to its candidate, and at least the most confident one per row that still has a
    mask. At the grid's last step (alpha_s = 1) every mask left is filled. ``threshold`` -> 0
    decodes everything in the first step; ``threshold`` > 1 decodes one token per step.

    A heuristic: positions unmasked together are drawn from their marginals as if independent
    (the model's joint law is lost when two confident tokens disagree), and the number of
    steps follows the model's confidence, not the time grid (steps after the last mask are
    calls that change nothing). ``tally`` counts the unmasked positions of each step.
    Randomness: one ``torch.multinomial`` over (B*L, K) when ``temperature`` > 0, else none.
    """

    threshold: float = 0.9
    tally: Tally = field(default_factory=Tally, compare=False)

    def __post_init__(self) -> None:
        self._check("ConfidenceStep")
        threshold = as_float(self.threshold, "threshold")
        if threshold < 0:
            raise ValueError(f"threshold (ConfidenceStep.threshold) must be >= 0, got {threshold}")
        object.__setattr__(self, "threshold", threshold)

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]:
        x0, conf, masked = self._scored(pred, z, generator)
        if at.alpha_s >= 1.0:
            return self._commit(z, x0, masked, self.tally)
        best = _top_n(conf, torch.ones(z.shape[0], dtype=torch.long, device=z.device))
        return self._commit(z, x0, masked & ((conf >= self.threshold) | best), self.tally)


@dataclass(frozen=True)
class LowConfidenceStep(_MaskedPolicy):
    """Low-confidence remasking (LLaDA), masked process.

    Per step t -> s: a candidate per masked position (argmax, or a draw at ``temperature`` >
    0) and its confidence p(candidate); the n most confident masked positions are unmasked
    to their candidates and the others stay masked (LLaDA "remasks" the low-confidence
    predictions), n = ``low_confidence_counts`` (LLaDA's schedule of n from the step count on
    a linspace grid with alpha linear in t).

    A heuristic: which tokens are revealed depends on the model's confidence, not on the
    uniformly random order of the masked process, so the sample is biased toward
    high-probability (low-entropy) text; tokens unmasked together are drawn as if
    independent. ``tally`` counts the unmasked positions. Randomness as ``ConfidenceStep``.
    """

    tally: Tally = field(default_factory=Tally, compare=False)

    def __post_init__(self) -> None:
        self._check("LowConfidenceStep")

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]:
        x0, conf, masked = self._scored(pred, z, generator)
        n = low_confidence_counts(masked.sum(-1), at.alpha_s, at.alpha_t)
        return self._commit(z, x0, _top_n(conf, n) & masked, self.tally)
