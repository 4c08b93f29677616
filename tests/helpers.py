"""Helpers that several test files share (import as ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path

import torch

from examples.config import Config, apply_overrides, preset

__all__ = ["AlphaOnlySchedule", "TwoMethodSchedule", "make_corpus", "tiny_config"]


def make_corpus(directory: Path) -> Path:
    """A dozen small text files of overlapping five-word lines: a corpus that trains in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    for i in range(12):
        starts = [(i + j) % len(words) for j in range(60)]
        lines = [" ".join(words[k : k + 5]) for k in starts]
        (directory / f"doc{i:02d}.txt").write_text(f"Document {i}.\n" + "\n".join(lines) + "\n")
    return directory


def tiny_config(data: Path, out: Path, **overrides) -> Config:
    """The cpu-demo preset shrunk to a two-block model and six CPU steps, ``overrides`` on top."""
    values = {
        "data.source": str(data), "data.seq_len": 32, "data.val_fraction": 0.2,
        "model.hidden": 32, "model.blocks": 2, "model.heads": 2, "model.cond_dim": 16,
        "model.dropout": 0.1, "train.steps": 6, "train.batch_size": 4, "train.warmup": 2,
        "train.log_every": 1, "train.eval_every": 3, "train.eval_sequences": 8,
        "train.ckpt_every": 2, "train.out_dir": str(out), "train.progress": False,
        "train.tensorboard": False, "train.device": "cpu", "duo.curriculum_end": 4,
    }  # fmt: skip
    values.update(overrides)
    if "duo.curriculum_end" not in overrides:  # a curriculum that leaves a discrete step
        values["duo.curriculum_end"] = min(4, values["train.steps"] - 1)
    return apply_overrides(preset("cpu-demo"), values)


class TwoMethodSchedule:
    """A duck-typed schedule with alpha(t) and dalpha_dt(t) only (no inverse): one accepted by
    training and sampling alike."""

    def alpha(self, t):
        return 1 - (1 - 1e-3) * t

    def dalpha_dt(self, t):
        return torch.full_like(t, -(1 - 1e-3))


class AlphaOnlySchedule:
    """A duck-typed schedule without dalpha_dt: refused by training and sampling alike."""

    def alpha(self, t):
        return 1 - t
