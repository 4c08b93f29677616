"""examples.train under FSDP2 on two gloo processes: sharded DCP checkpoints, exact resume.

Every rank writes its own shards (nothing is gathered on rank 0), ``checkpoint.pt`` names the
complete shard directory, and a run stopped after 3 steps and resumed from its sharded
checkpoint logs the same losses, bit for bit, and ends with the same weights and EMA as an
uninterrupted run. ``load_checkpoint`` reads the shards back as full tensors in one process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from examples.checkpoint import load_checkpoint
from examples.train import load_trained, train
from tests.helpers import make_corpus, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, corpus: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    from examples.distributed import init_distributed

    info = init_distributed("cpu")
    try:
        extra = {"train.fsdp": True, "train.micro_batch": 1}  # accumulation 2 x world 2
        full = train(tiny_config(Path(corpus), Path(out) / "full", **extra), info=info)
        first = train(tiny_config(Path(corpus), Path(out) / "split", **extra,
                                  **{"train.stop_after": 3}), info=info)  # fmt: skip
        rest = train(tiny_config(Path(corpus), Path(out) / "split", **extra,
                                 **{"train.resume": True}), info=info)  # fmt: skip
        params = {k: v.full_tensor() for k, v in rest.model.state_dict().items()}
        torch.save({"full": full.losses, "split": first.losses + rest.losses, "params": params,
                    "steps": (first.step, rest.step)}, Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_fsdp_run_saves_dcp_shards_and_resumes_exactly(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    mp.spawn(_worker, args=(2, _free_port(), str(corpus), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["steps"] == (3, 6)
    assert ranks[0]["split"] == ranks[0]["full"] == ranks[1]["split"]  # bit for bit

    # checkpoint.pt holds no weights; it names one complete shard directory, written by both
    # ranks (one .distcp file each); the previous checkpoint's shards are kept with it, and
    # the older ones are gone.
    split = tmp_path / "split"
    saved = load_checkpoint(split, full_tensors=False)
    prev = load_checkpoint(split / "checkpoint.prev.pt", full_tensors=False)
    assert {"model", "ema", "optimizer"}.isdisjoint(saved) and saved["step"] == 6
    assert prev["step"] == 4 and prev["shards"].startswith("shards-00000004-")
    shards = sorted(p.name for p in split.iterdir() if "shards-" in p.name)
    assert shards == [prev["shards"], saved["shards"]]
    assert saved["shards"].startswith("shards-00000006-")
    assert len(list((split / saved["shards"]).glob("*.distcp"))) == 2

    # Read back in one process: full tensors, equal to the gathered weights and to the
    # uninterrupted run's, EMA included.
    full_state, split_state = load_checkpoint(tmp_path / "full"), load_checkpoint(split)
    for key, value in ranks[0]["params"].items():
        assert torch.equal(split_state["model"][key], value), key
        assert torch.equal(full_state["model"][key], value), key
    for key, value in full_state["ema"].items():
        assert torch.equal(split_state["ema"][key], value), key
    run = load_trained(split)
    for name, p in run.model.named_parameters():
        assert torch.equal(p, split_state["ema"][name]), name
