"""FSDP2 shards on the process group's device: a gloo group on a host with an accelerator.

``fully_shard`` without a mesh builds its mesh on the accelerator whenever the host has one, so a
CPU (gloo) run on a CUDA host broke. The test makes any host look like one that has CUDA (the
accelerator query and ``torch.cuda.is_available`` patched in each worker) and checks that the
training example still shards on the CPU and trains.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def _pretend_cuda_host() -> None:
    cuda = torch.device("cuda", 0)
    torch._C._get_accelerator = lambda: cuda  # what fully_shard's default mesh asks
    torch.cuda.is_available = lambda: True  # what older torch versions ask


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from examples.distributed import init_distributed, wrap_model

    info = init_distributed("cpu")
    try:
        _pretend_cuda_host()
        torch.manual_seed(0)
        model = wrap_model(_Blocks(), info, fsdp=True)
        for name, p in model.named_parameters():
            assert isinstance(p, DTensor), name
            assert p.device_mesh.device_type == "cpu" and p.to_local().device.type == "cpu", name
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(2, 4, generator=torch.Generator().manual_seed(rank))
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        full = {k: v.full_tensor() for k, v in model.state_dict().items()}
        torch.save({"loss": loss.detach(), "params": full}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp_on_a_gloo_group_shards_on_the_cpu_even_on_a_cuda_host(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key  # one model after the step
