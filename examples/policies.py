"""Decoding policies on trained runs: NFE, tokens per forward pass, gen. PPL and entropy.

    python -m examples.policies runs/demo                                  # 64 samples per row
    python -m examples.policies runs/demo --num-samples 256 --steps 8,32,128 --out /tmp/p.json

RUNS_DIR holds the runs ``make demo`` (``examples.demo``) trains: ``duo``, ``mdlm`` and ``ar``,
loaded as ``examples.evaluate`` loads a run (``examples.loading.load_run``: EMA weights by
default, eval mode). At each step count of ``--steps`` the table has, for the Duo run,

- the exact ancestral sampler, tail "none" (down to t = 0) and "greedy" (one more call);
- the entropy-bound policy (``EntropyBoundStep``, transformers' DiffusionGemma default: its
  bound ``--entropy-bound``, temperatures annealed 0.8 -> 0.4), which reads the posterior
  p(x | z_t): the Duo model's x_hat is converted exactly (``discdiff.parameterization``);

and for the MDLM run

- the exact masked (MDLM ancestral) sampler, tail "none";
- LLaDA's low-confidence remasking (``LowConfidenceStep``) and Fast-dLLM's confidence-threshold
  decoding (``ConfidenceStep``, threshold ``--threshold``), both drawing candidates at
  ``--temperature`` (default 1; 0 is their argmax, which from an all-mask start gives every
  sample the same tokens).

Columns (``discdiff.samplers.decode``): NFE per sample, the denoiser calls a sample needed drawn
alone (every call for Duo; for MDLM the calls while it still held a mask and had changed since
its last call); tokens per forward, L / mean NFE; gen. PPL, the perplexity of the samples under
the AR run, and entropy, the mean per-sample unigram entropy of the token ids in nats
(``examples.evaluate.generative_perplexity``). The exact samplers sample the model's law; the
policies are heuristics (``discdiff.samplers.policies``). The table is printed as markdown and
written beside the JSON rows (``--out``, default RUNS_DIR/policies.json, and .md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from discdiff.samplers import (
    ConfidenceStep,
    Decoding,
    EntropyBoundStep,
    LowConfidenceStep,
    MaskedStep,
    UniformStep,
    decode,
)
from examples.backbone import TrainedRun
from examples.evaluate import generative_perplexity, load_evaluator, parse_steps, positive_int
from examples.loading import load_run
from examples.replicate.tables import markdown_table

__all__ = ["HEADERS", "build_parser", "decoders", "main", "policy_rows"]

HEADERS = [("sampler", "sampler"), ("steps", "steps"), ("nfe", "NFE per sample"),
           ("tokens_per_forward", "tokens per forward"), ("gen_ppl", "gen. PPL"),
           ("entropy", "entropy (nats)")]  # fmt: skip


def decoders(
    kind: str, mask_id: int | None, steps: int, args: argparse.Namespace
) -> list[Decoding]:
    """The rows of one run (``kind`` "duo" or "mdlm") at ``steps`` steps, each with a fresh
    step object (a policy's ``tally`` counts one row)."""
    if kind == "duo":
        return [
            Decoding("Duo ancestral (exact), tail none", UniformStep(), steps),
            Decoding("Duo ancestral (exact), greedy tail", UniformStep(), steps, tail="greedy"),
            Decoding(f"Duo entropy bound {args.entropy_bound:g}",
                     EntropyBoundStep(args.entropy_bound), steps, reads="posterior"),
        ]  # fmt: skip
    assert mask_id is not None
    t = args.temperature
    return [
        Decoding("MDLM ancestral (exact), tail none", MaskedStep(mask_id), steps),
        Decoding(f"LLaDA low-confidence, T={t:g}", LowConfidenceStep(mask_id, t), steps),
        Decoding(f"Fast-dLLM confidence tau={args.threshold:g}, T={t:g}",
                 ConfidenceStep(mask_id, t, threshold=args.threshold), steps),
    ]  # fmt: skip


def _load(runs_dir: Path, kind: str, args: argparse.Namespace) -> TrainedRun:
    """The run RUNS_DIR/<kind> (its directory is named after its objective, as the demo's
    are), refused with a message naming RUNS_DIR if it is not one."""
    path = runs_dir / kind
    if not (path / "config.json").is_file():
        raise SystemExit(f"python -m examples.policies: error: RUNS_DIR {runs_dir} has no run "
                         f"{path} (expected the duo, mdlm and ar runs that `make demo` trains "
                         "into one directory)")  # fmt: skip
    run = load_run(argparse.Namespace(run=str(path), weights=args.weights, device=args.device))
    if run.config.train.objective != kind:
        raise SystemExit(f"python -m examples.policies: error: {path} holds a "
                         f"{run.config.train.objective} run, not a {kind} run")  # fmt: skip
    run.model.eval()
    return run


def _row(run: TrainedRun, spec: Decoding, evaluator: Any, args: argparse.Namespace) -> dict:
    """One row of the table: ``spec`` on ``run``, scored by ``evaluator``."""
    d = run.objective.diffusion
    masked = run.objective.name == "mdlm"
    gen = torch.Generator(device=args.device).manual_seed(args.seed)  # each row alike
    start = time.perf_counter()
    out = decode(spec, run.model, args.num_samples, run.config.data.seq_len,
                 schedule=d.schedule, vocab_size=d.model_vocab_size,
                 mask_id=d.mask_id if masked else None,
                 time_conditioned=bool(getattr(d, "time_conditioned", False)),
                 batch_size=args.batch_size, generator=gen)  # fmt: skip
    wall = time.perf_counter() - start
    if masked and bool((out.samples == d.mask_id).any()):
        raise RuntimeError(f"{spec.name}: a sample kept a mask")
    scores = generative_perplexity(out.samples, run.tokenizer, evaluator)
    return {"sampler": spec.name, "run": str(run.run_dir), "steps": spec.steps,
            "tail": spec.tail, "nfe": out.mean_nfe,
            "tokens_per_forward": out.tokens_per_forward, **scores, "wall_s": wall,
            "samples": [run.tokenizer.decode(r.tolist()) for r in out.samples[:2]]}  # fmt: skip


def policy_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row: for each step count, the Duo decoders then the MDLM ones."""
    runs_dir = Path(args.runs_dir)
    runs = {kind: _load(runs_dir, kind, args) for kind in ("duo", "mdlm", "ar")}
    evaluator = load_evaluator(str(runs["ar"].run_dir), args.device)
    rows = []
    for steps in args.steps:
        for kind in ("duo", "mdlm"):
            run = runs[kind]
            mask_id = run.objective.diffusion.mask_id if kind == "mdlm" else None
            for spec in decoders(kind, mask_id, steps, args):
                rows.append(_row(run, spec, evaluator, args))
                r = rows[-1]
                print(f"{r['sampler']}, {steps} steps: NFE {r['nfe']:.2f}, gen PPL "
                      f"{r['gen_ppl']:.3f} ({r['wall_s']:.1f} s)", flush=True)  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.policies",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)  # fmt: skip
    p.add_argument("runs_dir", help="a directory holding the duo, mdlm and ar runs")
    p.add_argument("--steps", type=parse_steps, default=[8, 32], help="e.g. 8,32")
    p.add_argument("--num-samples", type=positive_int, default=64, help="samples per row")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0, help="every row's generator seed")
    p.add_argument("--entropy-bound", type=float, default=0.1,
                   help="EntropyBoundStep's bound (nats; DiffusionGemma's default 0.1)")
    p.add_argument("--threshold", type=float, default=0.9, help="Fast-dLLM's threshold")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="LLaDA / Fast-dLLM candidate temperature (0: argmax)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None,
                   help="JSON file (default RUNS_DIR/policies.json); the table beside it, .md")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    rows = policy_rows(args)
    table = markdown_table(rows, HEADERS)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "policies.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\n{table}\n\n{args.num_samples} samples per row, gen. PPL under "
          f"{rows[0]['evaluator']}; rows written to {out} and {out.with_suffix('.md')}")
    return rows


if __name__ == "__main__":
    main()
