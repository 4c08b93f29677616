"""examples.checkpoint: atomic writes, RNG capture, compatibility checks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from examples.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    atomic_write,
    capture_rng_state,
    check_compatible,
    file_sha256,
    load_checkpoint,
    previous_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_crash_during_write_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash(f):
        f.write(b"partial bytes of a new checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    # no temp files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError, match="cannot serialise"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path)["step"] == 1


def test_unreadable_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path)
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a discdiff example checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    save_checkpoint(tmp_path / "c.pt", {"rng": state})
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    np.testing.assert_array_equal(expected[2], again[2])


def test_compatibility_check_names_every_difference():
    saved = {"vocab_size": 87, "model": {"hidden_size": 128, "n_blocks": 4}, "objective": "duo"}
    check_compatible(saved, dict(saved))
    other = {"vocab_size": 258, "model": {"hidden_size": 64, "n_blocks": 4}, "objective": "mdlm"}
    with pytest.raises(CheckpointMismatchError) as err:
        check_compatible(saved, other, where="run/checkpoint.pt")
    message = str(err.value)
    assert "vocabulary size: checkpoint 87, this run 258" in message
    assert "model.hidden_size: checkpoint 128, this run 64" in message
    assert "objective: checkpoint duo, this run mdlm" in message


def test_the_checksum_and_the_previous_checkpoint_beside_each_save(tmp_path):
    import hashlib

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    assert not previous_checkpoint(path).exists()  # nothing replaced yet
    save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    # sha256sum's format, checked against hashlib on the bytes
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "checkpoint.pt.sha256").read_text() == f"{want}  checkpoint.pt\n"
    assert file_sha256(path) == want
    prev = previous_checkpoint(path)
    assert prev.name == "checkpoint.prev.pt"
    assert load_checkpoint(prev)["step"] == 1 and load_checkpoint(path)["step"] == 2
    digest = hashlib.sha256(prev.read_bytes()).hexdigest()  # named so that sha256sum -c works
    assert (tmp_path / "checkpoint.prev.pt.sha256").read_text() == f"{digest}  checkpoint.prev.pt\n"


def test_a_truncated_checkpoint_is_refused_naming_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert str(path) in message and "truncated, damaged or replaced" in message
    assert f"previous checkpoint {tmp_path / 'checkpoint.prev.pt'} is intact" in message
    # One flipped byte, same length: the checksum still sees it.
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(CorruptCheckpointError, match="truncated, damaged or replaced"):
        load_checkpoint(path)
    path.write_bytes(data)
    assert load_checkpoint(path)["step"] == 2
    # With the previous one damaged too, there is nothing to fall back to.
    prev = previous_checkpoint(path)
    prev.write_bytes(prev.read_bytes()[:10])
    path.write_bytes(data[:10])
    with pytest.raises(CorruptCheckpointError, match="no intact previous checkpoint"):
        load_checkpoint(path)
