"""An exponential moving average of a model's parameters (the weights the paper evaluates)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param after every optimizer step.

    The shadow copies live on the parameters' device, in float32 (or the parameters' dtype if
    wider). Under FSDP2 they are sharded exactly like the parameters.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [
            params[n].detach().clone().to(torch.promote_types(params[n].dtype, torch.float32))
            for n in self.names
        ]

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        _reshard(model)
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = zip(self._params(model), self.shadow, strict=True)
        params = [p.detach().to(s.dtype) for p, s in pairs]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(self._params(model), self.shadow, strict=True):
            p.copy_(s.to(p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model`` (e.g. for validation)."""
        backup = [p.detach().clone() for p in self._params(model)]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(self._params(model), backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: _full(s) for n, s in zip(self.names, self.shadow, strict=True)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ValueError(f"EMA state lacks parameters {missing[:5]}")
        for n, s in zip(self.names, self.shadow, strict=True):
            _load_into(s, state[n])


def _reshard(model: nn.Module) -> None:
    """FSDP2 keeps the root's parameters unsharded after a forward pass without backward (e.g.
    validation); shard them again so the EMA sees the same (sharded) parameters each time."""
    for module in model.modules():
        reshard = getattr(module, "reshard", None)
        if callable(reshard):
            reshard()


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor of the whole value (gathers an FSDP2 DTensor shard)."""
    full = getattr(t, "full_tensor", None)
    return (full() if full is not None else t).detach().cpu()


def _load_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    if hasattr(dst, "device_mesh"):  # DTensor: take this rank's shard of the full value
        from torch.distributed.tensor import distribute_tensor

        src = distribute_tensor(src.to(dst.device), dst.device_mesh, dst.placements)
        dst.to_local().copy_(src.to_local())
    else:
        dst.copy_(src.to(dst.device, dst.dtype))
