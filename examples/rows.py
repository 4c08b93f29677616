"""The shapes data comes in: packed rows (an (N, L) array), unpacked ``PaddedRows`` with their
padding masks, ``LabelledRows`` with a class label each, and the ``Batch`` the loop trains on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "LabelledRows", "PaddedRows", "Rows", "batch_of"]


@dataclass(frozen=True)
class PaddedRows:
    """Unpacked rows: ``ids`` (N, L) int32, one document (or a piece of one) per row, padded
    with ``pad_id`` after its ``lengths[i]`` real tokens.

    Indexing gives the ids, like a packed (N, L) array, so code written for packed rows keeps
    working; ``mask(index)`` gives the matching padding masks (True at real tokens).
    """

    ids: np.ndarray
    lengths: np.ndarray
    pad_id: int
    documents: int = 0
    """How many documents the rows hold (fewer than rows when long ones were cut)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ids.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.ids[index]

    def mask(self, index: Any) -> np.ndarray:
        """(n, L) bool padding masks of the rows ``index`` selects."""
        lengths = np.asarray(self.lengths[index])
        return lengths[..., None] > np.arange(self.ids.shape[1])

    @property
    def padded_fraction(self) -> float:
        """The share of positions that are padding."""
        total = self.ids.size
        return float(1.0 - np.asarray(self.lengths, dtype=np.int64).sum() / total) if total else 0.0


@dataclass(frozen=True)
class LabelledRows:
    """Rows (packed or ``PaddedRows``) with one class label each: ``labels`` (N,) int64 in
    [0, len(names)], ``len(names)`` the null label. Indexing gives the ids, like the rows."""

    rows: np.ndarray | PaddedRows
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.rows.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.rows[index]


Rows = np.ndarray | PaddedRows | LabelledRows
"""Packed rows (an (N, L) array) or unpacked ``PaddedRows``, with labels or without."""


@dataclass(frozen=True)
class Batch:
    """A batch of clean tokens ``x_0`` (B, L) int64, its padding mask (B, L) bool, True at
    real tokens (None for packed rows: every token is real), and its class labels (B,) int64
    (None without ``--data.labels``)."""

    x_0: Tensor
    mask: Tensor | None = None
    label: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        mask, label = (None if t is None else t.to(device, non_blocking=non_blocking)
                       for t in (self.mask, self.label))  # fmt: skip
        return Batch(self.x_0.to(device, non_blocking=non_blocking), mask, label)


def batch_of(rows: Rows, index: np.ndarray) -> Batch:
    """The ``Batch`` of the rows ``index`` selects: ids, padding masks and labels."""
    label = None
    if isinstance(rows, LabelledRows):
        label, rows = torch.as_tensor(rows.labels[index]), rows.rows
    x_0 = torch.as_tensor(np.asarray(rows[index]), dtype=torch.long)
    mask = torch.as_tensor(rows.mask(index)) if isinstance(rows, PaddedRows) else None
    return Batch(x_0, mask, label)
