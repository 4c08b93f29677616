"""examples.train: exact resume (also after a SIGKILL), DDP and FSDP2 on gloo, bad checkpoints."""

from __future__ import annotations

import math
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
from examples.config import apply_overrides, load_config, parse_args
from examples.metrics import read_csv
from examples.run import resolve_config
from examples.train import NonFiniteLossError, lr_multiplier, main, train
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


# --- what a new user hit silently: each now refused, reported or handled -----------------------


def test_the_curriculum_is_a_fraction_of_the_run_and_never_swallows_it(corpus_dir, tmp_path):
    from examples.config import preset
    from examples.run import resolve_config

    demo = preset("cpu-demo")  # 600 steps, half of them curriculum
    assert resolve_config(demo).duo.curriculum_end == 300
    short = apply_overrides(demo, {"train.steps": 300})
    assert resolve_config(short).duo.curriculum_end == 150  # not the whole run
    swallowed = apply_overrides(demo, {"train.steps": 300, "duo.curriculum_end": 300})
    with pytest.raises(ValueError, match="never on the discrete process"):
        resolve_config(swallowed)
    assert resolve_config(apply_overrides(swallowed, {"train.objective": "mdlm"}))  # no curriculum
    # The boundary is fixed when the run starts: more steps on resume do not move it.
    cfg = tiny_config(corpus_dir, tmp_path / "run", **{"duo.curriculum_end": None,
                                                       "duo.curriculum_fraction": 0.5})
    first = train(cfg)
    assert load_config(tmp_path / "run").duo.curriculum_end == 3
    rest = train(apply_overrides(cfg, {"train.resume": True, "train.steps": 10}))
    assert first.step == 6 and rest.step == 10
    assert load_config(tmp_path / "run").duo.curriculum_end == 3
    phases = [r["phase"] for r in read_csv(tmp_path / "run" / "train_log.csv")]
    assert phases == ["curriculum"] * 3 + ["discrete"] * 7


def test_resume_refuses_options_that_change_the_run_and_never_rewrites_its_record(
    corpus_dir, tmp_path
):
    out = tmp_path / "run"
    cfg = tiny_config(corpus_dir, out, **{"data.tokenizer": "byte", "train.steps": 4})
    train(cfg)
    before = (out / "config.json").read_text()
    changed = apply_overrides(cfg, {"train.resume": True, "train.steps": 6,
                                    "data.tokenizer": "char", "train.lr": 1e-2})  # fmt: skip
    with pytest.raises(ValueError) as err:
        train(changed)
    message = str(err.value)
    assert "--data.tokenizer 'char' (the run has 'byte')" in message
    assert "--train.lr 0.01 (the run has 0.001)" in message
    assert (out / "config.json").read_text() == before  # untouched
    # From the command line: the saved config is the starting point; more steps are fine.
    more = train(parse_args(["--train.out_dir", str(out), "--train.resume", "true",
                             "--train.steps", "6"]))  # fmt: skip
    assert more.step == 6 and load_config(out).data.tokenizer == "byte"
    resolved = resolve_config(cfg)  # the record holds the resolved config (clean context too)
    assert resolved.duo.clean_context == 0.1  # the DiT's default
    assert load_config(out) == apply_overrides(resolved, {"train.steps": 6, "train.resume": True})


def test_resuming_a_complete_run_says_so_and_how_to_extend_it(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(corpus_dir, out, **{"train.steps": 3}))
    logs = (out / "train_log.csv").read_text()
    result = main(["--train.out_dir", str(out), "--train.resume", "true"])
    assert result.complete and result.step == 3 and result.losses == []
    printed = capsys.readouterr().out
    assert f"the run in {out} is complete (step 3 of 3)" in printed
    assert f"--train.out_dir {out} --train.resume true --train.steps 6" in printed
    assert "tokens/s" not in printed and (out / "train_log.csv").read_text() == logs


def test_a_nan_loss_is_skipped_counted_and_stops_the_run_when_it_persists(
    corpus_dir, tmp_path, monkeypatch, capsys
):
    from examples import objectives

    real, calls = objectives.DuoObjective.loss, []
    bad: set[int] = {2, 3}

    def loss(self, *args, **kwargs):
        calls.append(len(calls))
        out = real(self, *args, **kwargs)
        return out * float("nan") if len(calls) - 1 in bad else out

    monkeypatch.setattr(objectives.DuoObjective, "loss", loss)
    result = train(tiny_config(corpus_dir, tmp_path / "a"))
    assert result.step == 6 and result.skipped_steps == 2 and len(calls) == 8
    assert all(math.isfinite(x) for x in result.losses) and len(result.losses) == 6
    for value in load_checkpoint(tmp_path / "a")["model"].values():
        assert torch.isfinite(value).all()  # the NaN never reached the weights
    skipped = [r["skipped_steps"] for r in read_csv(tmp_path / "a" / "train_log.csv")]
    assert skipped == ["0", "0", "2", "2", "2", "2"]

    calls.clear()
    bad.clear()
    bad.update(range(3, 100))  # from the fourth step on, every loss is NaN
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_config(corpus_dir, tmp_path / "b", **{"train.max_bad_steps": 3}))
    message = str(err.value)
    assert message.startswith("step 4:") and "3 steps in a row" in message
    assert f"{tmp_path / 'b' / 'checkpoint.pt'} (step 2)" in message
    assert "learning rate" in message and "--train.precision fp32" in message
    assert len(calls) == 6  # three good steps, three skipped, then the stop


def test_a_learning_rate_that_blows_up_the_weights_stops_with_the_message(corpus_dir, tmp_path):
    """No injection: a DiT whose weights overflow gives non-finite outputs; the loop, not the
    library's output check, decides (skip, then stop)."""
    cfg = tiny_config(corpus_dir, tmp_path, **{"train.lr": 1e6, "train.warmup": 1,
                                               "train.max_bad_steps": 2, "train.steps": 20})
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        train(cfg)


def test_a_truncated_checkpoint_is_named_with_the_one_to_fall_back_to(corpus_dir, tmp_path):
    from examples.checkpoint import CorruptCheckpointError

    out = tmp_path / "run"
    train(tiny_config(corpus_dir, out, **{"train.stop_after": 4}))  # checkpoints at 2 and 4
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 2
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptCheckpointError) as err:
        train(tiny_config(corpus_dir, out, **{"train.resume": True}))
    message = str(err.value)
    assert f"{out / 'checkpoint.pt'} is corrupted" in message
    assert f"the previous checkpoint {out / 'checkpoint.prev.pt'} is intact" in message
    # Following the advice resumes from step 2.
    (out / "checkpoint.prev.pt").replace(out / "checkpoint.pt")
    (out / "checkpoint.prev.pt.sha256").replace(out / "checkpoint.pt.sha256")
    assert train(tiny_config(corpus_dir, out, **{"train.resume": True})).step == 6


def test_distillation_losses_print_in_scientific_notation():
    from examples.train import format_loss

    assert format_loss(5.8e-09, "dcd") == "5.800e-09"
    assert format_loss(1.5e-07, "sdtt") == "1.500e-07"
    assert format_loss(2.3394, "duo") == "2.3394"
