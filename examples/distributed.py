"""Data parallelism for the training loop: torchrun environment, DDP and FSDP2 wrapping.

Launch with ``torchrun --nproc_per_node N -m examples.train ...``: torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed`` reads
them and joins the process group (NCCL on GPUs, gloo on CPU). Without those variables the run is
a single process and nothing here does any communication.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "init_distributed",
    "shard_mesh",
    "shutdown_distributed",
    "unwrap",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=30)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if _active():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if _active():
        return all_reduce_sum(x) / dist.get_world_size()
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (a collective stop decision)."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: Any) -> list[Any]:
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_mesh(info: DistInfo) -> DeviceMesh:
    """The 1-D device mesh over all ranks that FSDP2 shards on: the process group's device.

    ``fully_shard`` without a mesh builds one on the accelerator whenever the host has one, even
    when the group is gloo and the model and data are on the CPU (it then fails, or shards onto a
    device nothing else uses). A gloo group shards on the CPU; otherwise on ``info.device``.
    """
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cpu" if dist.get_backend() == "gloo" else info.device.type
    return init_device_mesh(device_type, (info.world_size,))


def wrap_model(model: nn.Module, info: DistInfo, *, fsdp: bool = False) -> nn.Module:
    """DDP (default) or FSDP2 (``fully_shard`` on every transformer block, then the root).

    With one process the model is returned unchanged.
    """
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        mesh = shard_mesh(info)
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / torch.compile wrappers (FSDP2 shards in place)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)
