"""Atomic checkpoints that carry everything a run needs to continue exactly.

A run directory holds ``checkpoint.pt`` (the latest state), ``config.json`` (the resolved config
the run was started with) and ``tokenizer_spec.json``. Writes are atomic: the bytes go to a
temporary file in the same directory, are flushed and fsync'ed, then ``os.replace`` swaps them
in, and the directory entry is fsync'ed. A run killed at any moment therefore leaves either the
previous checkpoint or the new one, never a torn file.

Every checkpoint gets a checksum beside it, ``checkpoint.pt.sha256`` (``sha256sum`` format, so
``sha256sum -c`` checks it too), and the checkpoint it replaces is kept as
``checkpoint.prev.pt`` (a hard link, no copy) until the next one is complete. ``load_checkpoint``
verifies the checksum: a file truncated or damaged after it was written (a full disk, a copy
cut short) is refused with a message naming it and the previous checkpoint to fall back to,
instead of an unpickling error or, worse, weights that load but are wrong.

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
import hashlib
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FILE",
    "CheckpointMismatchError",
    "Checkpointer",
    "CorruptCheckpointError",
    "atomic_write",
    "capture_rng_state",
    "check_compatible",
    "find_checkpoint",
    "file_sha256",
    "load_checkpoint",
    "load_sharded",
    "previous_checkpoint",
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


class CorruptCheckpointError(ValueError):
    """The checkpoint file does not match its checksum, or cannot be read at all."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], *,
    before_replace: Callable[[Path], None] | None = None,
) -> Path:  # fmt: skip
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same directory,
    which then replaces ``path``. If ``write`` raises, ``path`` is untouched and the temporary
    file is removed. ``before_replace(tmp)`` runs once the temporary file is complete and
    fsync'ed, just before it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
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


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def previous_checkpoint(path: str | Path) -> Path:
    """Where the checkpoint replaced by the latest save of ``path`` is kept
    (``checkpoint.pt`` -> ``checkpoint.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Keep the checkpoint at ``path`` as ``previous_checkpoint(path)``, with a checksum file
    naming it: a hard link made under a temporary name and renamed, so a kill leaves the old
    one whole."""
    if not path.is_file():
        return
    prev = previous_checkpoint(path)
    sums, prev_sums = _checksum_path(path), _checksum_path(prev)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(prev_sums)  # it describes the file about to be replaced
    tmp = prev.with_name(f".{prev.name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system: copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)
    words = sums.read_text().split() if sums.is_file() else []
    if words:  # the same digest, under the name the file now has (``sha256sum -c`` reads it)
        line = f"{words[0]}  {prev.name}\n"
        atomic_write(prev_sums, lambda f: f.write(line.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus a format version) with ``torch.save``, its checksum
    beside it (``<path>.sha256``); the checkpoint it replaces is kept as
    ``previous_checkpoint(path)`` until the next save."""
    path = Path(path)
    payload = {"format": FORMAT_VERSION, **state}
    digest: list[str] = []

    def before_replace(tmp: Path) -> None:  # the new file is complete: now retire the old one
        digest.append(file_sha256(tmp))
        _keep_previous(path)

    atomic_write(path, lambda f: torch.save(payload, f), before_replace=before_replace)
    line = f"{digest[0]}  {path.name}\n"  # sha256sum's format
    atomic_write(_checksum_path(path), lambda f: f.write(line.encode()))
    return path


def find_checkpoint(run_or_file: str | Path) -> Path:
    path = Path(run_or_file)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def _fallback_advice(path: Path) -> str:
    """What to do about a damaged ``path``: the previous checkpoint when it is intact."""
    prev = previous_checkpoint(path)
    if prev.is_file() and _checksum_problem(prev) is None:
        return (f"the previous checkpoint {prev} is intact: to resume from it, replace the "
                f"damaged file with it (mv {prev} {path}; mv {_checksum_path(prev)} "
                f"{_checksum_path(path)})")  # fmt: skip
    return f"no intact previous checkpoint ({prev}) to fall back to: the run must start afresh"


def _checksum_problem(path: Path) -> str | None:
    """Why ``path`` does not match its ``.sha256`` file (None: it matches, or has none)."""
    sums = _checksum_path(path)
    if not sums.is_file():
        return None  # written before checksums existed
    want = sums.read_text().split()[0] if sums.read_text().split() else ""
    got = file_sha256(path)
    if got == want:
        return None
    return (f"its SHA-256 {got[:16]}... differs from the {want[:16]}... recorded in {sums.name} "
            f"({path.stat().st_size} bytes now): it is not the discdiff checkpoint written there "
            "but was truncated, damaged or replaced since")  # fmt: skip


def load_checkpoint(
    run_or_file: str | Path, map_location: str | torch.device = "cpu", *,
    full_tensors: bool = True,
) -> dict:  # fmt: skip
    """Load a checkpoint written by ``save_checkpoint`` (a run directory or the file itself).

    Verifies the checksum beside it first; a damaged file raises ``CorruptCheckpointError``
    naming it and the previous checkpoint to fall back to. For a sharded checkpoint,
    ``full_tensors`` reads its model and EMA into full tensors under ``"model"`` and ``"ema"``
    (in this process alone); the training loop instead reads each rank's shards with
    ``load_sharded``.
    """
    path = find_checkpoint(run_or_file)
    problem = _checksum_problem(path)
    if problem is not None:
        raise CorruptCheckpointError(f"{path} is corrupted: {problem}; {_fallback_advice(path)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CorruptCheckpointError(
            f"{path} is not a readable discdiff checkpoint: {err}; {_fallback_advice(path)}"
        ) from err
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


def remove_stale_shards(directory: str | Path, keep: str | Collection[str | None] | None) -> None:
    """Remove shard directories (complete or not) other than those named in ``keep`` (call on
    one rank, after the checkpoint naming them is written)."""
    kept = {keep} if keep is None or isinstance(keep, str) else set(keep)
    for path in Path(directory).iterdir():
        stem = path.name.removeprefix(".")
        if path.is_dir() and stem.startswith(SHARDS_PREFIX) and path.name not in kept:
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


# --- the training loop's checkpoints: plain (torch.save) and sharded (DCP) behind one interface --


class Checkpointer:
    """Saves and restores a training run's model, EMA and optimizer with the rest of its state.

    ``sharded=False``: full state dicts inside ``checkpoint.pt`` (one process, DDP, or FSDP2
    reading a full checkpoint). ``sharded=True`` (FSDP2): every rank writes its own shards with
    DCP and ``checkpoint.pt`` names them; the shards of the previous checkpoint are kept with it.
    ``save`` and ``restore`` are collectives under torch.distributed: call them on every rank.
    """

    def __init__(self, run_dir: str | Path, *, sharded: bool, is_main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT_FILE
        self.sharded, self.is_main = sharded, is_main
        self._shards: str | None = None  # those of the latest checkpoint, kept with the next

    def save(self, step: int, model: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
             rest: dict[str, Any]) -> None:  # fmt: skip
        """Write the checkpoint of ``step``: the three modules' state and ``rest`` (meta,
        scheduler, data position, RNG states, ...)."""
        from examples import distributed as D

        if self.sharded:  # every rank writes its shards; nothing is gathered
            from torch.distributed.checkpoint.state_dict import (
                get_model_state_dict,
                get_state_dict,
            )

            token = D.all_gather_objects(os.urandom(4).hex())[0]  # rank 0's, on every rank
            shards = f"{SHARDS_PREFIX}{step:08d}-{token}"
            model_state, optim_state = get_state_dict(model, optimizer)
            parts = {"model": model_state, "optimizer": optim_state,
                     "ema": get_model_state_dict(ema.module)}  # fmt: skip
            save_sharded(self.run_dir, shards, parts)
            tensors: dict[str, Any] = {"shards": shards}
        else:
            from examples.ema import ema_state_dict

            tensors = {
                "model": {k: v.detach().cpu() for k, v in D.unwrap(model).state_dict().items()},
                "ema": ema_state_dict(ema),
                "optimizer": optimizer.state_dict(),
            }
        if self.is_main:
            save_checkpoint(self.path, {"step": step, **tensors, **rest})
            if self.sharded:
                remove_stale_shards(self.run_dir, keep={tensors["shards"], self._shards})
        self._shards = tensors.get("shards")
        D.barrier()

    def restore(self, state: dict[str, Any], model: torch.nn.Module, ema: Any,
                optimizer: torch.optim.Optimizer) -> None:  # fmt: skip
        """Load the three modules' state from ``state`` (from ``load_checkpoint(...,
        full_tensors=False)``), whichever way it was written: a sharded checkpoint read by a
        sharded run gets each rank's shards; a full one goes into a DDP or an FSDP2 model."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
            set_state_dict,
        )

        from examples import distributed as D
        from examples.ema import load_ema_state_dict

        if "shards" in state:  # each rank reads its own shards
            model_state, optim_state = get_state_dict(model, optimizer)
            tensors = {"model": model_state, "optimizer": optim_state,
                       "ema": get_model_state_dict(ema.module)}  # fmt: skip
            load_sharded(self.run_dir, state["shards"], tensors)
            set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                           optim_state_dict=tensors["optimizer"])  # fmt: skip
            set_model_state_dict(ema.module, tensors["ema"])
            self._shards = state["shards"]
            return
        load_ema_state_dict(ema, state["ema"])
        if self.sharded:  # full tensors into an FSDP2 model
            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(model, state["model"], options=full)
            set_optimizer_state_dict(model, optimizer, state["optimizer"], options=full)
            return
        D.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
