"""Decoding policies against the exact samplers, on small trained toy models of a known law.

    python -m benchmarks.bench_policies             # K = 8, L = 16, 2000 samples per row
    python -m benchmarks.bench_policies --quick     # shorter training, 500 samples per row
    python -m benchmarks.bench_policies --exact     # the law's exact denoisers, no training

The data law is a peaked Markov chain (``discdiff.testing.MarkovChain``) whose NLL and entropy
are exact. Two ToyDenoisers are trained on it with ``discdiff.testing``: a Duo model (uniform
NELBO, its logits x_hat) and an MDLM model (masked NELBO); ``--exact`` uses the NELBO-optimal
denoisers of the law instead (``ExactDenoiser``, ``ExactMaskedDenoiser``: training's limit, so
the exact samplers' rows show only the few-step error). Every row draws samples with one
sampler through ``discdiff.samplers.run`` and reports

- NFE: denoiser calls per sample (for the masked runs, the calls made while the sample still
  held a mask: a policy that finishes early stops costing calls);
- tokens per forward: L / NFE;
- gen. PPL: exp(mean NLL per token) of the samples under the true law, beside the data's own
  exp(H / L) (lower than the data's means mode-seeking, not better);
- entropy: the mean entropy of each sample's token counts (``discdiff.metrics.sample_entropy``)
  beside the data's; distinct: the share of distinct samples.

The exact samplers (ancestral uniform / masked, Duo's greedy tail) sample the model's law; the
policies (``discdiff.samplers.policies``) are heuristics. The entropy-bound policy reads the
posterior p(x | z_t), which it was designed for (DiffusionGemma), converted exactly from the Duo
model's x_hat (``discdiff.parameterization.posterior_from_x_hat``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.metrics import sample_entropy
from discdiff.parameterization import posterior_from_x_hat
from discdiff.samplers import Finish, MaskedStep, Predictor, TimeGrid, UniformStep, run
from discdiff.samplers.policies import ConfidenceStep, EntropyBoundStep, LowConfidenceStep
from discdiff.schedules import LogLinearSchedule
from discdiff.testing import (
    ExactDenoiser,
    ExactMaskedDenoiser,
    MarkovChain,
    train_duo,
    train_mdlm,
)


@dataclass(frozen=True)
class Config:
    vocab_size: int = 8
    length: int = 16
    train_steps: int = 2000
    curriculum_steps: int = 500
    n_samples: int = 2000
    seed: int = 0


QUICK = Config(train_steps=600, curriculum_steps=150, n_samples=500)


@dataclass(frozen=True)
class Run:
    name: str
    process: str  # "uniform" or "masked"
    step: object
    steps: int
    tail: str = "none"
    posterior: bool = False


def runs(k: int, length: int) -> list[Run]:
    steps = length  # the policies' budget: at most one call per token
    return [
        Run("ancestral (exact)", "uniform", UniformStep(), steps),
        Run("ancestral + greedy tail", "uniform", UniformStep(), steps, tail="greedy"),
        Run("ancestral (exact), 4 steps", "uniform", UniformStep(), 4),
        Run("entropy bound 0.1", "uniform", EntropyBoundStep(0.1), steps, posterior=True),
        Run("entropy bound 1.0", "uniform", EntropyBoundStep(1.0), steps, posterior=True),
        Run("entropy bound 1.0, 4 steps", "uniform", EntropyBoundStep(1.0), 4, posterior=True),
        Run("MDLM ancestral (exact)", "masked", MaskedStep(k), steps),
        Run("MDLM ancestral (exact), 4 steps", "masked", MaskedStep(k), 4),
        Run("LLaDA low-confidence, argmax", "masked", LowConfidenceStep(k), steps),
        Run("LLaDA low-confidence, T=1", "masked", LowConfidenceStep(k, temperature=1.0), steps),
        Run(
            "LLaDA low-confidence, T=1, 4 steps", "masked", LowConfidenceStep(k, temperature=1.0), 4
        ),  # fmt: skip
        Run("Fast-dLLM tau=0.9, T=1", "masked", ConfidenceStep(k, 1.0, threshold=0.9), steps),
        Run("Fast-dLLM tau=0.5, T=1", "masked", ConfidenceStep(k, 1.0, threshold=0.5), steps),
    ]


def _as_posterior(model: torch.nn.Module, k: int):
    def denoiser(z_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return posterior_from_x_hat(model(z_t, sigma), z_t, sigma.clamp(min=1e-6), k)

    return denoiser


def sample(spec: Run, models: dict, cfg: Config, g: torch.Generator) -> tuple[torch.Tensor, float]:
    """The samples (n, L) of one row of the table and the calls per sample: every call for
    the uniform runs; for the masked ones, the calls made while the sample still held a mask
    (a batch runs until its slowest row is done; alone, a row would stop there)."""
    k, n, length = cfg.vocab_size, cfg.n_samples, cfg.length
    grid = TimeGrid.build(LogLinearSchedule(), spec.steps, tail=spec.tail)
    finish = None if spec.tail == "none" else Finish(spec.tail)
    if spec.process == "uniform":
        model = models["duo"]
        denoiser = _as_posterior(model, k) if spec.posterior else model
        predict = Predictor(denoiser, k)
        z = torch.randint(0, k, (n, length), generator=g)
    else:
        predict = Predictor(models["mdlm"], k + 1, time_conditioned=False, cache=True)
        z = torch.full((n, length), k, dtype=torch.long)
    active = torch.zeros(n, dtype=torch.float64)  # calls each row needed
    state = {"z": z}

    def count(record) -> None:
        needed = (
            (state["z"] == k).any(-1)
            if spec.process == "masked"
            else torch.ones(n, dtype=torch.bool)
        )
        active.add_(needed.double())
        state["z"] = record.z_s

    out = run(predict, spec.step, grid, z, finish=finish, generator=g, callback=count)
    return out, float(active.mean())


def table(cfg: Config, exact: bool = False) -> list[dict]:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    law = MarkovChain.peaked(cfg.vocab_size, seed=123)
    k, length = cfg.vocab_size, cfg.length
    start = time.perf_counter()
    if exact:
        models = {"duo": ExactDenoiser(law), "mdlm": ExactMaskedDenoiser(law)}
        what = "the law's exact denoisers"
    else:
        models = {
            "duo": train_duo(law, length, steps=cfg.train_steps, gamma_min=-4.0, gamma_max=5.0,
                             curriculum_steps=cfg.curriculum_steps, hidden=128, depth=2,
                             generator=g),
            "mdlm": train_mdlm(law, length, steps=cfg.train_steps, hidden=128, depth=2,
                               generator=g),
        }  # fmt: skip
        what = (f"models trained in {time.perf_counter() - start:.0f} s "
                f"({cfg.train_steps} steps each)")  # fmt: skip
    print(f"K={k}, L={length}, {cfg.n_samples} samples per row; {what}")
    data = law.sample(cfg.n_samples, length, g)
    data_ppl = math.exp(law.entropy(length) / length)
    print(f"{'sampler':36s} {'NFE':>5s} {'tok/fwd':>7s} {'gen PPL':>8s} {'entropy':>8s} "
          f"{'distinct':>8s}")  # fmt: skip
    print(
        f"{'data (exact samples of the law)':36s} {'-':>5s} {'-':>7s} {data_ppl:8.3f} "
        f"{sample_entropy(data):8.3f} {torch.unique(data, dim=0).shape[0] / len(data):8.3f}"
    )
    rows = [row("data gen. PPL (exp(H/L))", "", data_ppl, None)]
    for spec in runs(k, length):
        x, calls = sample(spec, models, cfg, g)  # calls per sample
        assert bool((x < k).all()), f"{spec.name}: a sample kept a mask"
        ppl = math.exp(float(law.nll(x).mean()) / length)
        ent, distinct = sample_entropy(x), torch.unique(x, dim=0).shape[0] / len(x)
        print(f"{spec.name:36s} {calls:5.2f} {length / calls:7.2f} {ppl:8.3f} {ent:8.3f} "
              f"{distinct:8.3f}")  # fmt: skip
        rows.append(row(f"{spec.name}: gen. PPL (NFE {calls:.2f}, {length / calls:.2f} tok/fwd)",
                        "", ppl, data_ppl))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter training, fewer samples")
    parser.add_argument("--exact", action="store_true", help="the law's exact denoisers")
    add_json_option(parser)
    args = parser.parse_args()
    write_rows(args.json, table(QUICK if args.quick else Config(), exact=args.exact))


if __name__ == "__main__":
    main()
