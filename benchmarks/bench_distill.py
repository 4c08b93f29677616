"""Discrete Consistency Distillation where the truth is known (issue 6, item 2).

    python -m benchmarks.bench_distill            # the table (a few minutes on one CPU core)
    python -m benchmarks.bench_distill --quick    # a smaller run (about a minute)
    python -m benchmarks.bench_distill --json rows.json   # and the summary rows as JSON

A peaked Markov chain over short sequences (``discdiff.testing.MarkovChain``) is the data law:
its exact likelihood, entropy H, unigram and bigram laws are known. A small MLP denoiser is
trained with ``UniformDiffusion`` (Gaussian curriculum, then the discrete process), distilled with
``DCDistiller`` in both KL directions, and every model is sampled with
``discdiff.samplers.sample_uniform``. For each sampler setting the table gives the exact mean
NLL of the samples under the chain (nats per sequence; exact samples score H), the total
variation of their unigram and bigram frequencies from the chain's, and the fraction of
distinct sequences among the samples (a diversity check: exact samples give the "data" row).

Sampling grids: "loglin" is alpha = 1 - (1 - 1e-3) t, the teacher's training schedule and the
one ``DCDistiller.sample`` uses (alpha_1 ~ 0 matches the uniform prior); "dual" is
``distiller.schedule``, the distillation window (alpha_1 far from 0 at this K: a wrong prior,
kept as the ablation). Tails are the library's (``sample_uniform(tail=...)``): "greedy" (N
steps, then argmax x_hat of one more call: N + 1 network calls), "map" (the same call, the mode
of q(z_0 | z_t, x_hat), which keeps each token's own evidence) and "none" (N ancestral steps
down to t = 0). The ``exact`` rows use the chain's own NELBO-optimal denoiser
(forward-backward): their few-step error is the error of few-step factorised sampling itself.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.distill import DCDistiller
from discdiff.samplers import nfe
from discdiff.schedules import GammaSchedule, LogLinearSchedule
from discdiff.testing import ExactDenoiser, MarkovChain, distill, sample_metrics, train_duo
from discdiff.testing import evaluate_uniform as evaluate


@dataclass(frozen=True)
class Config:
    vocab_size: int = 8
    length: int = 6
    gamma_min: float = -4.0
    gamma_max: float = 5.0  # alpha from ~1 down to 0.017 at K = 8
    train_steps: int = 4000
    curriculum_steps: int = 1000
    hidden: int = 256
    depth: int = 3
    batch_size: int = 256
    initial_steps: int = 16  # rounds: dt = 1/16, 1/8, 1/4, 1/2
    n_rounds: int = 4
    steps_per_round: int = 600
    distill_lr: float = 1e-3
    n_samples: int = 16384
    seed: int = 0


QUICK = Config(
    train_steps=1500, curriculum_steps=500, hidden=128, depth=2, batch_size=128,
    steps_per_round=250, n_samples=4096,
)


def run(cfg: Config) -> list[tuple[str, str, int, str, dict[str, float]]]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    law = MarkovChain.peaked(cfg.vocab_size, seed=123)
    k, length = cfg.vocab_size, cfg.length
    rows: list[tuple[str, str, int, str, dict[str, float]]] = []

    def distiller(teacher, divergence: str) -> DCDistiller:
        return DCDistiller(
            teacher, k, window=GammaSchedule(cfg.gamma_min, cfg.gamma_max),
            initial_steps=cfg.initial_steps, steps_per_round=cfg.steps_per_round,
            n_rounds=cfg.n_rounds, divergence=divergence,  # type: ignore[arg-type]
        )

    grids = {"dual": distiller(lambda z, s: z, "kl_student_teacher").schedule,
             "loglin": LogLinearSchedule()}

    def add(name: str, model, steps: int, grid: str, tail: str) -> None:
        m = evaluate(model, law, length, steps, schedule=grids[grid], n=cfg.n_samples,
                     tail=tail, generator=g)
        rows.append((name, grid, steps, tail, m))

    def few_steps(name: str, model) -> None:
        for tail in ("greedy", "map"):
            for steps in (2, 4, 8):
                add(name, model, steps, "loglin", tail)
        for steps in (2, 4):
            add(name, model, steps, "dual", "greedy")

    rows.append(("data", "-", 0, "-", sample_metrics(law.sample(cfg.n_samples, length, g), law)))
    exact = ExactDenoiser(law)
    add("exact", exact, 128, "loglin", "none")
    for tail in ("greedy", "map"):
        for steps in (2, 4):
            add("exact", exact, steps, "loglin", tail)

    start = time.perf_counter()
    teacher = train_duo(
        law, length, steps=cfg.train_steps, curriculum_steps=cfg.curriculum_steps,
        gamma_min=cfg.gamma_min, gamma_max=cfg.gamma_max, batch_size=cfg.batch_size,
        hidden=cfg.hidden, depth=cfg.depth, generator=g,
    )
    print(f"teacher trained in {time.perf_counter() - start:.0f} s", flush=True)
    add("teacher", teacher, 128, "loglin", "none")
    add("teacher", teacher, 128, "loglin", "greedy")
    for steps in (2, 4):
        add("teacher", teacher, steps, "loglin", "none")
    few_steps("teacher", teacher)
    for divergence, label in (("kl_student_teacher", "DCD KL(s||t)"),
                              ("kl_teacher_student", "DCD KL(t||s)")):
        start = time.perf_counter()
        student = distill(
            teacher, law, length, distiller(teacher, divergence), batch_size=cfg.batch_size,
            lr=cfg.distill_lr, generator=g,
        )
        print(f"{label} distilled in {time.perf_counter() - start:.0f} s", flush=True)
        few_steps(label, student)
    return rows


def print_table(rows, cfg: Config, entropy: float) -> None:
    print(
        f"\nMarkov chain K={cfg.vocab_size}, L={cfg.length}: entropy H = {entropy:.3f} nats; "
        f"{cfg.n_samples} samples per row. Teacher: {cfg.train_steps} steps "
        f"({cfg.curriculum_steps} curriculum). DCD: T={cfg.initial_steps}, {cfg.n_rounds} rounds "
        f"x {cfg.steps_per_round} steps, gamma in [{cfg.gamma_min}, {cfg.gamma_max}], teacher "
        "refreshed from the student."
    )
    header = (
        f"{'model':13s} {'grid':6s} {'steps':>5s} {'NFE':>4s} {'tail':9s} {'NLL':>7s} "
        f"{'|NLL-H|':>7s} "
        f"{'TV uni':>6s} {'TV bi':>6s} {'distinct':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, grid, steps, tail, m in rows:
        calls = "-" if name == "data" else nfe(steps, tail)  # exact samples: no sampler, no tail
        print(
            f"{name:13s} {grid:6s} {steps:5d} {calls:>4} {tail:9s} {m['nll']:7.3f} "
            f"{abs(m['nll'] - entropy):7.3f} {m['tv_unigram']:6.3f} {m['tv_bigram']:6.3f} "
            f"{m['distinct']:8.3f}"
        )


def summary_rows(rows, entropy: float) -> list[dict[str, Any]]:
    """|NLL - H| of the DCD student (reverse KL) against its teacher, log-linear grid, greedy
    tail, at 2, 4 and 8 steps: the student should be the closer one."""
    gap = {(name, grid, steps, tail): abs(m["nll"] - entropy)
           for name, grid, steps, tail, m in rows}  # fmt: skip
    out = []
    for steps in (2, 4, 8):
        key = ("loglin", steps, "greedy")
        student, teacher = gap.get(("DCD KL(s||t)", *key)), gap.get(("teacher", *key))
        if student is None or teacher is None:
            continue
        out.append(row(f"|NLL - H| at {steps} steps (NFE {steps + 1}), greedy: DCD vs its "
                       "teacher (Markov chain)", "nats", student, teacher,
                       target="< 1 (student closer)", met=student < teacher))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument("--seed", type=int, default=0)
    add_json_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else Config()
    cfg = Config(**{**cfg.__dict__, "seed": args.seed})
    law = MarkovChain.peaked(cfg.vocab_size, seed=123)
    rows = run(cfg)
    print_table(rows, cfg, law.entropy(cfg.length))
    write_rows(args.json, summary_rows(rows, law.entropy(cfg.length)))


if __name__ == "__main__":
    main()
