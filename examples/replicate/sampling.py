"""Sampling a trained diffusion run at each step count and tail (Concepts §5), and scoring it.

``sample_tails`` draws greedy and MAP from one trajectory (they share the tail call) and the
no-tail samples from their own; ``generation_rows`` turns them into the rows of section (c).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MASKED_OBJECTIVES", "TailSamples", "generation_rows", "sample_tails", "tails_of"]

MASKED_OBJECTIVES = ("mdlm", "sdtt")


def tails_of(objective: str) -> tuple[str, ...]:
    """The tails worth sampling for a run: greedy / MAP / none for the uniform-state models; for
    the masked ones greedy and MAP coincide (a masked token's posterior is x_hat)."""
    return ("greedy", "none") if objective in MASKED_OBJECTIVES else ("greedy", "map", "none")


@dataclass(frozen=True)
class TailSamples:
    """Samples of one tail: ``samples`` (N, L), ``nfe`` the denoiser calls per sample (the most
    any batch took: the masked sampler's cache can skip calls), ``wall_s`` the sampling time of
    the trajectory that produced them (shared by greedy and MAP)."""

    samples: torch.Tensor
    nfe: int
    wall_s: float


def sample_tails(
    run: Any, steps: int, num_samples: int, *, batch_size: int, seed: int,
    tails: Sequence[str] = ("greedy", "map", "none"),
) -> dict[str, TailSamples]:  # fmt: skip
    """Samples of a diffusion run in ``steps`` steps for each of ``tails`` (Concepts §5), seeded.

    Greedy and MAP share one trajectory and one tail call: the run samples with ``tail="map"``
    and the greedy output is ``greedy_tail`` of the same call's logits (from the callback), which
    is exactly what ``tail="greedy"`` returns with the same seed. ``"none"`` is its own run, on
    its own grid (down to t = 0). For a masked run ask for greedy and none only."""
    from discdiff.samplers import greedy_tail

    masked = run.objective.name in MASKED_OBJECTIVES
    unknown = set(tails) - {"greedy", "none"} - (set() if masked else {"map"})
    if unknown:
        raise ValueError(f"tails {sorted(unknown)} not available for a {run.objective.name} run")
    length = run.config.data.seq_len
    run.model.eval()
    ending = [t for t in tails if t in ("greedy", "map")]
    groups = ([tuple(ending)] if ending else []) + ([("none",)] if "none" in tails else [])
    out: dict[str, TailSamples] = {}
    for group in groups:
        tail = "map" if "map" in group else group[0]
        gen = torch.Generator().manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in group}
        calls = 0
        start = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, num_samples, batch_size):
                records: list[Any] = []
                z = run.objective.sample(run.model, min(batch_size, num_samples - lo), length,
                                         steps, tail=tail, generator=gen,
                                         callback=records.append)  # fmt: skip
                calls = max(calls, records[-1].nfe)
                for t in group:
                    parts[t].append((z if t == tail else greedy_tail(records[-1].logits)).cpu())
        wall = time.perf_counter() - start
        for t in group:
            out[t] = TailSamples(torch.cat(parts[t]), calls, wall)
    return {t: out[t] for t in tails}


def generation_rows(
    run: Any, evaluator: Any, gen_steps: Sequence[int], *, num_samples: int, batch_size: int,
    seed: int, label: str, tails: Sequence[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Generative perplexity and entropy of a diffusion run at each step count and tail, with
    the NFE beside the steps."""
    from examples.evaluate import generative_perplexity

    rows = []
    for steps in gen_steps:
        drawn = sample_tails(run, steps, num_samples, batch_size=batch_size, seed=seed,
                             tails=tails or tails_of(run.objective.name))  # fmt: skip
        for tail, got in drawn.items():
            res = generative_perplexity(got.samples, run.tokenizer, evaluator)
            rows.append({
                "method": label, "steps": steps, "tail": tail, "nfe": got.nfe,
                "gen_ppl": res["gen_ppl"], "entropy": res["entropy"],
                "num_samples": res["num_samples"], "wall_s": got.wall_s,
                "evaluator": res["evaluator"], "samples": [
                    run.tokenizer.decode(r.tolist()) for r in got.samples[:4]],
            })  # fmt: skip
    return rows

