"""examples.train: exact resume (also after a SIGKILL), DDP and FSDP2 on gloo, bad checkpoints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from examples.checkpoint import CheckpointMismatchError, load_checkpoint
from examples.metrics import read_csv
from examples.train import lr_multiplier, train
from tests.helpers import make_corpus, tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_lr_schedule_shapes():
    kw = {"warmup": 4, "total": 20, "min_ratio": 0.1}
    assert [lr_multiplier(s, schedule="constant", **kw) for s in (0, 3, 4, 19)] == [
        0.25, 1.0, 1.0, 1.0,
    ]  # fmt: skip
    assert lr_multiplier(4, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(20, schedule="cosine", **kw) == pytest.approx(0.1)


def test_resume_gives_the_same_losses(corpus_dir, tmp_path):
    # Duo with dropout and gradient accumulation; the split run crosses the curriculum boundary
    # (step 4) after resuming at step 3.
    extra = {"train.micro_batch": 2}
    full = train(tiny_config(corpus_dir, tmp_path / "full", **extra))
    first = train(tiny_config(corpus_dir, tmp_path / "split", **extra, **{"train.stop_after": 3}))
    assert first.step == 3 and first.stopped_early
    assert load_checkpoint(tmp_path / "split")["step"] == 3
    rest = train(tiny_config(corpus_dir, tmp_path / "split", **extra, **{"train.resume": True}))
    assert rest.step == 6
    assert first.losses + rest.losses == full.losses  # bit-for-bit
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    val_full = [r["nelbo"] for r in read_csv(tmp_path / "full" / "val_log.csv")]
    val_split = [r["nelbo"] for r in read_csv(tmp_path / "split" / "val_log.csv")]
    assert val_full == val_split and len(val_full) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_run_resumes_exactly(corpus_dir, tmp_path):
    """SIGKILL a CLI run at an arbitrary moment after its first checkpoint, resume it, and
    compare every logged loss with an uninterrupted run."""
    steps = 40
    args = ["--preset", "cpu-demo", "--data.source", str(corpus_dir), "--data.seq_len", "32",
            "--model.hidden", "32", "--model.blocks", "2", "--model.heads", "2",
            "--model.cond_dim", "16", "--train.steps", str(steps), "--train.batch_size", "4",
            "--train.warmup", "2", "--train.log_every", "1", "--train.eval_every", "1000",
            "--train.eval_sequences", "8", "--train.ckpt_every", "3", "--train.progress", "false",
            "--train.tensorboard", "false", "--train.device", "cpu",
            "--duo.curriculum_end", "10"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "examples.train", *args]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*command, "--train.out_dir", str(killed_dir)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    ckpt = killed_dir / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere between two checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = load_checkpoint(killed_dir)["step"]
    assert 3 <= killed_at < steps
    subprocess.run(
        [sys.executable, "-m", "examples.train", "--train.out_dir", str(killed_dir),
         "--train.resume", "true"], cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([*command, "--train.out_dir", str(tmp_path / "whole")], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    resumed = read_csv(killed_dir / "train_log.csv")
    whole = read_csv(tmp_path / "whole" / "train_log.csv")
    assert [r["step"] for r in resumed] == [str(s) for s in range(1, steps + 1)]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]


def test_checkpoint_from_another_vocabulary_or_architecture(corpus_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus_dir, out, **{"train.steps": 2, "duo.curriculum_end": 1}))
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train(tiny_config(corpus_dir, out, **{"train.steps": 2}))
    message = r"--model.hidden 64 \(the run has 32\)"  # refused by name, before any work
    with pytest.raises(ValueError, match=message):
        train(tiny_config(corpus_dir, out, **{"train.resume": True, "model.hidden": 64,
                                             "train.steps": 4}))  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match="vocabulary size"):
        # Resuming reuses the saved tokenizer; corrupt it to another vocabulary.
        (out / "tokenizer_spec.json").write_text('{"kind": "byte"}')
        train(tiny_config(corpus_dir, out, **{"train.resume": True, "train.steps": 4,
                                             "duo.curriculum_end": 1}))  # fmt: skip


def test_bf16_on_cpu_is_refused(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="only used on CUDA"):
        train(tiny_config(corpus_dir, tmp_path, **{"train.precision": "bf16"}))


# --- data parallelism on two CPU processes --------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, corpus: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    from examples.distributed import init_distributed

    info = init_distributed("cpu")
    try:
        for name, extra in (
            ("ar_ddp", {"train.objective": "ar", "model.dropout": 0.0, "train.micro_batch": 2}),
            ("ar_fsdp", {"train.objective": "ar", "model.dropout": 0.0, "train.micro_batch": 2,
                         "train.fsdp": True}),  # fmt: skip
            ("duo_ddp", {"train.micro_batch": 1}),  # accumulation 2 x world 2
        ):
            cfg = tiny_config(Path(corpus), Path(out) / name, **extra)
            result = train(cfg, info=info)
            params = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
            if name == "ar_fsdp":
                params = {k: v.full_tensor() for k, v in params.items()}
            torch.save({"params": params, "losses": result.losses},
                       Path(out) / f"{name}_rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_ddp_and_fsdp_on_two_cpu_processes(corpus_dir, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(corpus_dir), str(tmp_path)), nprocs=2)
    # One process, the same global batch of 4: gradients averaged over ranks must match it.
    single = train(tiny_config(corpus_dir, tmp_path / "ar_single",
                               **{"train.objective": "ar", "model.dropout": 0.0}))  # fmt: skip
    reference = single.model.state_dict()
    for name in ("ar_ddp", "ar_fsdp", "duo_ddp"):
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in (0, 1)]
        assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the global mean
        for key, value in ranks[0]["params"].items():
            assert torch.equal(value, ranks[1]["params"][key]), (name, key)  # ranks in lockstep
        if name.startswith("ar"):
            torch.testing.assert_close(ranks[0]["losses"], single.losses, rtol=1e-5, atol=1e-6)
            for key, value in reference.items():
                torch.testing.assert_close(ranks[0]["params"][key], value, rtol=1e-4, atol=1e-5)
    saved = load_checkpoint(tmp_path / "ar_fsdp")  # sharded (DCP), read back as full weights
    assert saved["model"]["embed.weight"].shape == reference["embed.weight"].shape


def test_antithetic_strata_span_ranks_and_accumulation_steps():
    from discdiff.timesteps import antithetic_times
    from examples.distributed import DistInfo
    from examples.objectives import DuoObjective
    from examples.train import _step_generator, _times

    objective = DuoObjective(16, gamma_min=-3.0, gamma_max=0.5, tau=1e-3, curriculum_end=0)
    parts = [
        _times(objective, 2, DistInfo(rank=r, world_size=2), 2, i, seed=3, step=5, eps=1e-3)
        for r in range(2) for i in range(2)
    ]  # fmt: skip
    spread = torch.cat(parts).sort().values
    whole = antithetic_times(8, eps=1e-3, generator=_step_generator(3, 5)).sort().values
    torch.testing.assert_close(spread, whole)
    gaps = torch.diff(spread)  # one time per stratum of width (1 - eps) / 8
    torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - 1e-3) / 8))
