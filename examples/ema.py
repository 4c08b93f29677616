"""The exponential moving average of a model's weights (the weights the paper evaluates):
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``.

``ema.module`` is a copy of the model holding the average; validation and sampling run it, and
a distiller's teacher is refreshed from it. Under FSDP2 that copy is sharded like the model
(``examples.distributed.wrap_model(ema.module, ...)``), so the average costs each rank its
shard only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["build_ema", "ema_state_dict", "load_ema_state_dict", "update_ema"]


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """ema <- decay * ema + (1 - decay) * param after every ``update_ema``, starting at the
    model's current weights (build it before wrapping the model in DDP or FSDP)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.requires_grad_(False)
    # AveragedModel copies the weights at its first update and averages after that: this first
    # update makes every optimizer step an EMA step, from the initial weights on.
    ema.update_parameters(model)
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """One EMA step towards ``model``'s parameters (both sharded alike under FSDP2)."""
    _reshard(model)
    _reshard(ema.module)
    ema.update_parameters(model)


def ema_state_dict(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """``{parameter name: full CPU tensor}`` of the average (gathers FSDP2 shards)."""
    _reshard(ema.module)
    return {n: _full(p) for n, p in ema.module.named_parameters()}


@torch.no_grad()
def load_ema_state_dict(ema: AveragedModel, state: dict[str, torch.Tensor]) -> None:
    """Load ``ema_state_dict``'s output (each rank takes its shard under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _reshard(ema.module)
    missing = [n for n, _ in ema.module.named_parameters() if n not in state]
    if missing:
        raise ValueError(f"EMA state lacks parameters {missing[:5]}")
    options = StateDictOptions(full_state_dict=True, strict=False)  # parameters only
    set_model_state_dict(ema.module, state, options=options)


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
