"""Atomic checkpoints that carry everything a run needs to continue exactly.

A run directory holds ``checkpoint.pt`` (the latest state), ``config.json`` (the resolved config
the run was started with) and ``tokenizer_spec.json``. Writes are atomic: the bytes go to a
temporary file in the same directory, are flushed and fsync'ed, then ``os.replace`` swaps them
in, and the directory entry is fsync'ed. A run killed at any moment therefore leaves either the
previous checkpoint or the new one, never a torn file.

The checkpoint holds: model and EMA weights, optimizer and LR-scheduler state, the step, the
data iterator position, every RNG state (torch CPU and CUDA, Python, NumPy, and the run's own
generators), the objective's state (curriculum phase, DCD round and teacher) and a ``meta``
record (vocabulary size, model architecture, objective) that ``check_compatible`` compares
before loading, so a checkpoint from another vocabulary or architecture fails with a clear
message instead of a shape error deep in ``load_state_dict``.

Sharded (FSDP2) runs keep the model, EMA and optimizer state out of ``checkpoint.pt``: every
rank writes its own shards with ``torch.distributed.checkpoint`` (DCP) into a temporary
directory beside it, which is renamed ``shards-<step>-<token>`` once complete; only then does
``checkpoint.pt`` (which names it under ``"shards"``) replace the previous one, and the older
shard directories are removed. Nothing is gathered on one rank, and a kill at any moment leaves
the previous checkpoint whole. The run directory must be on a file system every rank sees.
Resuming reads each rank's shards back (into another world size too); ``load_checkpoint``
reads a sharded model and EMA into full tensors for evaluation in one process.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FILE",
    "CheckpointMismatchError",
    "atomic_write",
    "capture_rng_state",
    "check_compatible",
    "find_checkpoint",
    "load_checkpoint",
    "load_sharded",
    "remove_stale_shards",
    "restore_rng_state",
    "save_checkpoint",
    "save_sharded",
]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
SHARDS_PREFIX = "shards-"


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another vocabulary, architecture or objective."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same directory,
    which then replaces ``path``. If ``write`` raises, ``path`` is untouched and the temporary
    file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as plain tensors and lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus a format version) with ``torch.save``."""
    payload = {"format": FORMAT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def find_checkpoint(run_or_file: str | Path) -> Path:
    path = Path(run_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(
    run_or_file: str | Path, map_location: str | torch.device = "cpu", *,
    full_tensors: bool = True,
) -> dict:  # fmt: skip
    """Load a checkpoint written by ``save_checkpoint`` (a run directory or the file itself).

    For a sharded checkpoint, ``full_tensors`` reads its model and EMA into full tensors under
    ``"model"`` and ``"ema"`` (in this process alone); the training loop instead reads each
    rank's shards with ``load_sharded``.
    """
    path = find_checkpoint(run_or_file)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable discdiff checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a discdiff example checkpoint (format {FORMAT_VERSION})")
    if "shards" in state and full_tensors:
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        shards = _shard_dir(path.parent, state["shards"])
        with warnings.catch_warnings():  # "no process group: loading in a single process"
            warnings.simplefilter("ignore", UserWarning)
            state.update(_load_state_dict_from_keys({"model", "ema"}, checkpoint_id=shards))
    return state


def _shard_dir(directory: Path, name: str) -> Path:
    shards = directory / name
    if not (shards / ".metadata").is_file():
        raise ValueError(f"{directory / CHECKPOINT_FILE} names the shards {shards}, which are "
                         "missing or incomplete")  # fmt: skip
    return shards


def save_sharded(directory: str | Path, name: str, state: dict[str, Any]) -> None:
    """Collective: every rank writes its shards of ``state`` (state dicts of DTensors, e.g.
    from ``get_state_dict``) with DCP into ``directory/.name.tmp``, which rank 0 renames to
    ``directory/name`` once every rank is done. ``name`` must be the same on every rank."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    tmp = directory / f".{name}.tmp"
    dcp.save(state, checkpoint_id=tmp)  # returns once rank 0 has written the metadata
    if not dist.is_initialized() or dist.get_rank() == 0:
        os.replace(tmp, directory / name)
        _fsync_dir(directory)
    if dist.is_initialized():
        dist.barrier()


def load_sharded(directory: str | Path, name: str, state: dict[str, Any]) -> None:
    """Collective: read the shards ``directory/name`` into ``state`` in place (each rank its
    own part of every DTensor; the world size may differ from the one that saved them)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=_shard_dir(Path(directory), name))


def remove_stale_shards(directory: str | Path, keep: str | None) -> None:
    """Remove shard directories (complete or not) other than ``keep`` (call on one rank, after
    the checkpoint naming ``keep`` is written)."""
    for path in Path(directory).iterdir():
        stem = path.name.removeprefix(".")
        if path.is_dir() and stem.startswith(SHARDS_PREFIX) and path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


_ARCH_KEYS = ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "mlp_ratio",
              "causal", "tie_weights", "frequency_dim", "num_classes")  # fmt: skip


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: str = "") -> None:
    """Compare the ``meta`` record of a checkpoint with the run about to load it.

    Raises ``CheckpointMismatchError`` naming every differing field: the tokenizer's vocabulary
    size, the model architecture (sizes, causal or not) and the objective family.
    """
    problems = []
    if saved.get("vocab_size") != current.get("vocab_size"):
        problems.append(
            f"vocabulary size: checkpoint {saved.get('vocab_size')}, "
            f"this run {current.get('vocab_size')} (another tokenizer or corpus?)"
        )
    saved_model, current_model = saved.get("model", {}), current.get("model", {})
    for key in _ARCH_KEYS:
        old, new = saved_model.get(key), current_model.get(key)
        if key in saved_model and key in current_model and old != new:
            problems.append(f"model.{key}: checkpoint {old}, this run {new}")
    old, new = saved.get("objective"), current.get("objective")
    if old is not None and new is not None and old != new:
        problems.append(f"objective: checkpoint {old}, this run {new}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit this run:\n  - " + "\n  - ".join(problems)
        )
