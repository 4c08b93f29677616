"""A DiT on disk: ``config.json`` (its ``DiTConfig``) beside ``model.safetensors`` (its weights).

``DiT.save_pretrained`` and ``DiT.from_pretrained`` call the two functions here; they take the
model and its config, or the class to build, as arguments, so this module never imports the DiT.
safetensors is an optional dependency, imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from discdiff.models.config import DiTConfig
from discdiff.models.projection import pad_output_rows

__all__ = ["CONFIG_NAME", "MODEL_TYPE", "WEIGHTS_NAME", "load_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "discdiff.DiT"

M = TypeVar("M", bound=nn.Module)


def save_pretrained(model: nn.Module, config: DiTConfig, directory: str | Path) -> Path:
    """Write ``config.json`` (``config``) and ``model.safetensors`` (the weights of ``model``, the
    DiT built from ``config``) into ``directory`` (created if needed).

    Tied weights are stored once (under ``embed.weight``). The output projection is stored as
    the model holds it, padding rows included (a file with K rows loads too).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if config.tie_weights:
        del state["final.linear.weight"]
    values = {"model_type": MODEL_TYPE, **config.to_dict()}
    (directory / CONFIG_NAME).write_text(json.dumps(values, indent=2) + "\n")
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def load_pretrained(
    directory: str | Path,
    *,
    model_class: Callable[[DiTConfig], M],
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> M:
    """Load a model written by ``save_pretrained`` from a local directory, as
    ``model_class(config)`` (``DiT.from_pretrained`` passes its class).

    ``overrides`` replace config fields that do not change the weights (e.g. dropout).
    The model takes the dtype of the stored weights.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no model directory at {directory}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name} (written by save_pretrained)")
    values = json.loads((directory / CONFIG_NAME).read_text())
    model_type = values.pop("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{directory / CONFIG_NAME} describes a {model_type!r}, not a DiT")
    config = DiTConfig.from_dict({**values, **overrides})
    state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
    if config.tie_weights and "embed.weight" in state:
        state["final.linear.weight"] = state["embed.weight"]
    model = model_class(config)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model = model.to(device)
    state = pad_output_rows(state, config)  # files written before the padding hold K rows
    _check_state(model.state_dict(), state, directory)
    model.load_state_dict(state)
    return model


def _check_state(expected: dict[str, Tensor], state: dict[str, Tensor], where: Path) -> None:
    """Raise a ValueError naming the missing, unexpected and mis-shaped weights, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{name}: stored {tuple(state[name].shape)}, config needs {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state and state[name].shape != t.shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"weights in {where} do not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
