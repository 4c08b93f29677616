"""Self-distillation through time where the truth is known.

    python -m benchmarks.bench_sdtt            # the table (a few minutes on one CPU core)
    python -m benchmarks.bench_sdtt --quick    # a smaller run (about a minute)
    python -m benchmarks.bench_sdtt --json rows.json   # and the summary rows as JSON

The data law is the peaked Markov chain of ``discdiff.testing`` (K = 8, L = 6): its exact
likelihood, entropy H, unigram and bigram laws are known. Two MDLM teachers are distilled with
``SDTTDistiller`` and every model is sampled with ``SDTTDistiller.sample`` (the masked ancestral
sampler on the log-linear schedule, tail "none": the last step reaches t = 0 and draws every
remaining mask, so a sample follows the model's ancestral law exactly):

- ``exact``: the chain's own NELBO-optimal masked denoiser (``ExactMaskedDenoiser``,
  forward-backward: x_hat at a masked position is p(x_l | the unmasked tokens)). Its samples at
  many steps follow the chain; at few steps they show the error of few-step factorised sampling
  itself. Its students are ``Corrected`` models: the exact denoiser plus a small MLP whose output
  starts at zero, so that distillation starts from the exact teacher.
- ``mdlm``: a small MLP (``discdiff.testing.ToyDenoiser`` with K + 1 outputs) trained with
  ``MaskedDiffusion``; its students are copies of it.

For each row: the exact mean NLL of the samples under the chain (nats per sequence; exact
samples score H), |NLL - H|, the total variation of their unigram and bigram frequencies from
the chain's, and the fraction of distinct sequences among the samples. All models sampled at
the same step count use the same random numbers (one generator seed per step count), so their
differences are not blurred by independent sampling noise.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.sdtt import SDTTDistiller
from discdiff.testing import (
    Corrected,
    ExactMaskedDenoiser,
    MarkovChain,
    distill,
    sample_metrics,
    train_mdlm,
)
from discdiff.testing import evaluate_masked as evaluate


@dataclass(frozen=True)
class Config:
    vocab_size: int = 8
    length: int = 6
    train_steps: int = 2500
    hidden: int = 256
    depth: int = 3
    batch_size: int = 256
    teacher_steps: int = 2
    initial_steps: int = 16  # teacher dt = 1/16, 1/8, 1/4: students for 8, 4, 2 steps
    n_rounds: int = 3
    steps_per_round: int = 300
    distill_lr: float = 1e-3
    n_samples: int = 16384
    seed: int = 0


QUICK = Config(
    train_steps=1200, hidden=128, depth=2, batch_size=128, steps_per_round=200, n_samples=4096,
)

Row = tuple[str, int, dict[str, float]]


def run(cfg: Config) -> list[Row]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    law = MarkovChain.peaked(cfg.vocab_size, seed=123)
    k, length = cfg.vocab_size, cfg.length
    rows: list[Row] = []

    def distiller(teacher: nn.Module, divergence: str) -> SDTTDistiller:
        return SDTTDistiller(
            teacher, k, teacher_steps=cfg.teacher_steps, initial_steps=cfg.initial_steps,
            steps_per_round=cfg.steps_per_round, n_rounds=cfg.n_rounds,
            divergence=divergence,  # type: ignore[arg-type]
        )

    def add(name: str, d: SDTTDistiller, model: nn.Module, steps_list: tuple[int, ...]) -> None:
        for steps in steps_list:
            # Common random numbers: every model at a step count samples with the same uniforms.
            common = torch.Generator().manual_seed(1000 * cfg.seed + steps)
            rows.append((name, steps, evaluate(d, model, law, length, steps, n=cfg.n_samples,
                                               generator=common)))

    def distilled(name: str, teacher: nn.Module, divergence: str, **kw: Any) -> nn.Module:
        start = time.perf_counter()
        d = distiller(teacher, divergence)
        student = distill(teacher, law, length, d, batch_size=cfg.batch_size,
                          lr=cfg.distill_lr, generator=g, **kw)
        print(f"{name} distilled in {time.perf_counter() - start:.0f} s", flush=True)
        return student

    rows.append(("data", 0, sample_metrics(law.sample(cfg.n_samples, length, g), law)))
    exact = Corrected(ExactMaskedDenoiser(law), k + 1, length)
    add("exact", distiller(exact, "kl_student_teacher"), exact, (128, 2, 4, 8))
    for divergence, label in (("kl_student_teacher", "SDTT(exact) KL(s||t)"),
                              ("kl_teacher_student", "SDTT(exact) KL(t||s)")):
        student = distilled(label, exact, divergence)
        add(label, distiller(student, divergence), student, (2, 4, 8))

    start = time.perf_counter()
    teacher = train_mdlm(law, length, steps=cfg.train_steps, batch_size=cfg.batch_size,
                         hidden=cfg.hidden, depth=cfg.depth, generator=g)
    print(f"mdlm teacher trained in {time.perf_counter() - start:.0f} s", flush=True)
    add("mdlm", distiller(teacher, "kl_student_teacher"), teacher, (128, 2, 4, 8))
    for divergence, label in (("kl_student_teacher", "SDTT(mdlm) KL(s||t)"),
                              ("kl_teacher_student", "SDTT(mdlm) KL(t||s)")):
        student = distilled(label, teacher, divergence)
        add(label, distiller(student, divergence), student, (2, 4, 8))
    return rows


def print_table(rows: list[Row], cfg: Config, entropy: float) -> None:
    print(
        f"\nMarkov chain K={cfg.vocab_size}, L={cfg.length}: entropy H = {entropy:.3f} nats; "
        f"{cfg.n_samples} samples per row, masked ancestral sampler, tail 'none'. MDLM teacher: "
        f"{cfg.train_steps} steps. SDTT: m={cfg.teacher_steps}, T={cfg.initial_steps}, "
        f"{cfg.n_rounds} rounds x {cfg.steps_per_round} steps (students for "
        f"{cfg.initial_steps // cfg.teacher_steps ** cfg.n_rounds} steps at the end), teacher "
        "refreshed from the student."
    )
    header = (
        f"{'model':21s} {'steps':>5s} {'NLL':>7s} {'|NLL-H|':>7s} {'TV uni':>6s} {'TV bi':>6s} "
        f"{'distinct':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, steps, m in rows:
        print(
            f"{name:21s} {steps:5d} {m['nll']:7.3f} {abs(m['nll'] - entropy):7.3f} "
            f"{m['tv_unigram']:6.3f} {m['tv_bigram']:6.3f} {m['distinct']:8.3f}"
        )


def summary_rows(rows: list[Row], entropy: float) -> list[dict[str, Any]]:
    """|NLL - H| of the SDTT student (reverse KL) of the MDLM teacher against that teacher, at
    2, 4 and 8 steps: the student should be the closer one."""
    gap = {(name, steps): abs(m["nll"] - entropy) for name, steps, m in rows}
    out = []
    for steps in (2, 4, 8):
        student, teacher = gap.get(("SDTT(mdlm) KL(s||t)", steps)), gap.get(("mdlm", steps))
        if student is None or teacher is None:
            continue
        out.append(row(f"|NLL - H| at {steps} steps, masked sampler: SDTT student vs its MDLM "
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
