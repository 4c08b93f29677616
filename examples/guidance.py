"""Classifier-free guidance on a labelled run: guided samples for every label and scale, and how
much they look like the label asked for.

    python -m examples.guidance RUN [--scales 0,1,2] [--num-samples 16] [--steps 32]

RUN is a run of ``examples.train`` trained with ``--data.labels`` (and label dropout,
``--train.cond_dropout``). For every label y and guidance scale gamma, ``guided_samples`` draws
samples with the run's sampler, ``cond={"label": y}``, ``uncond={"label": null}`` and
``guidance_scale=gamma`` (gamma = 0: the unconditional model, 1: the conditional one, above 1:
sharpened towards y; Schiff et al. 2024). Every cell uses the same seed, so the cells of one
label differ by gamma alone.

The effect is measured by one unigram model per label, fitted (add-one smoothed) on the run's
training rows of that label: ``hit_rate`` is the share of samples whose likelihood is highest
under the asked label's unigram model (chance: 1 / labels), ``nll`` the mean negative
log-likelihood per token under it (lower: closer to the label's text). A small, transparent
classifier: it sees word choice through the token frequencies, not style or syntax.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from examples.data import LabelledRows, PaddedRows, prepare_data

__all__ = ["GuidanceRow", "format_table", "guided_samples", "main", "unigram_log_probs"]


@dataclass(frozen=True)
class GuidanceRow:
    """One cell of the table: samples asked for ``label`` at guidance scale ``scale``."""

    label: str
    scale: float
    samples: int
    hit_rate: float
    """Share of the samples the per-label unigram classifier assigns to ``label``."""
    nll: float
    """Mean NLL per token (nats) of the samples under ``label``'s unigram model."""
    example: str = ""
    """The first sample, decoded."""


def unigram_log_probs(rows: LabelledRows, vocab_size: int) -> Tensor:
    """(num_classes, vocab_size) float64 log-probabilities of each label's add-one smoothed
    token frequencies in ``rows`` (padding left out; the null label's rows unused)."""
    inner = rows.rows
    counts = np.ones((len(rows.names), vocab_size), dtype=np.float64)
    for c in range(len(rows.names)):
        index = np.flatnonzero(rows.labels == c)
        if index.size == 0:
            continue
        ids = np.asarray(inner[index])
        if isinstance(inner, PaddedRows):
            ids = ids[inner.mask(index)]
        counts[c] += np.bincount(ids.ravel(), minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True)))


def guided_samples(
    run_dir: str | Path, *, scales: Sequence[float] = (0.0, 1.0, 2.0), num_samples: int = 16,
    steps: int = 32, length: int | None = None, batch_size: int | None = None, seed: int = 0,
    device: str | torch.device = "cpu", weights: str = "ema",
) -> list[GuidanceRow]:  # fmt: skip
    """Sample ``num_samples`` sequences of ``length`` tokens (default: the run's seq_len) in
    ``steps`` steps for every label of the run and every scale in ``scales``, and measure them
    with the per-label unigram classifier fitted on the run's training rows (module docstring).
    Returns one ``GuidanceRow`` per (label, scale), labels outer."""
    from examples.train import load_trained

    run = load_trained(run_dir, weights=weights, device=device)
    cfg = run.config
    num_classes = getattr(getattr(run.model, "config", None), "num_classes", None)
    if not cfg.data.labels or num_classes is None:
        raise ValueError(f"{run_dir} is not a labelled run (train it with --data.labels genre "
                         "or folder, and --train.cond_dropout > 0)")  # fmt: skip
    data = prepare_data(
        cfg.data.source, tokenizer=run.tokenizer, seq_len=cfg.data.seq_len,
        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed,
        cache_dir=cfg.data.cache_dir, max_documents=cfg.data.max_documents,
        packing=cfg.data.packing, labels=cfg.data.labels,
    )  # fmt: skip
    assert isinstance(data.train, LabelledRows)
    names = data.train.names
    if len(names) != num_classes:
        raise ValueError(f"{run_dir}: the model has {num_classes} labels, its data {len(names)}")
    log_p = unigram_log_probs(data.train, run.tokenizer.vocab_size).to(device)  # (C, K)
    length = length or cfg.data.seq_len
    batch_size = batch_size or num_samples
    out = []
    for c, name in enumerate(names):
        for gamma in scales:
            gen = torch.Generator(device=device).manual_seed(seed)  # the same noise per gamma
            chunks = []
            for start in range(0, num_samples, batch_size):
                b = min(batch_size, num_samples - start)
                label = torch.full((b,), c, dtype=torch.long, device=device)
                null = torch.full((b,), num_classes, dtype=torch.long, device=device)
                chunks.append(run.objective.sample(
                    run.model, b, length, steps, cond={"label": label}, guidance_scale=gamma,
                    uncond={"label": null}, tail=cfg.sample.tail, generator=gen, device=device,
                ))  # fmt: skip
            x = torch.cat(chunks).clamp_max(log_p.shape[1] - 1)  # (N, L); MDLM: no mask left
            scores = log_p[:, x].sum(-1)  # (C, N): each label's log-likelihood of each sample
            hit = (scores.argmax(0) == c).double().mean().item()
            nll = (-scores[c] / length).mean().item()
            text = run.tokenizer.decode(x[0].tolist())
            out.append(GuidanceRow(name, float(gamma), num_samples, hit, nll, text))
    return out


def format_table(rows: Sequence[GuidanceRow]) -> str:
    """The rows as a small text table (one line per label and scale)."""
    labels = list(dict.fromkeys(r.label for r in rows))
    width = max([5, *map(len, labels)])
    lines = [f"{'label':<{width}}  gamma  samples  assigned to label  unigram NLL (nats/token)"]
    for r in rows:
        lines.append(f"{r.label:<{width}}  {r.scale:5g}  {r.samples:7d}  {r.hit_rate:17.2f}  "
                     f"{r.nll:24.3f}")  # fmt: skip
    lines.append(f"(chance: {1 / max(1, len(labels)):.2f} of samples assigned to the label)")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, e.g. 0,1,2, got {text!r}") from None
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"guidance scales must be finite and >= 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> list[GuidanceRow]:
    p = argparse.ArgumentParser(prog="python -m examples.guidance", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("run", help="a run directory of examples.train trained with --data.labels")
    p.add_argument("--scales", type=_floats, default=[0.0, 1.0, 2.0],
                   help="guidance scales gamma, comma-separated (default: 0,1,2)")
    p.add_argument("--num-samples", type=_positive, default=16, help="samples per cell")
    p.add_argument("--steps", type=_positive, default=32, help="sampling steps")
    p.add_argument("--length", type=_positive, default=None,
                   help="tokens per sample (default: the run's sequence length)")
    p.add_argument("--seed", type=int, default=0, help="seed of every cell's samples")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = guided_samples(args.run, scales=args.scales, num_samples=args.num_samples,
                          steps=args.steps, length=args.length, seed=args.seed,
                          device=args.device)  # fmt: skip
    print(f"classifier-free guidance, {args.run}: {args.num_samples} samples per cell, "
          f"{args.steps} steps; per-label unigram classifier fitted on the training rows")
    print(format_table(rows))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
