"""Reading the reference code's checkpoints: Lightning files, PyTorchModelHubMixin and
Hugging Face remote-code directories, as plain tensors under the reference's key names.

A Lightning file is unpickled with torch's weights-only unpickler; the classes it would need
(OmegaConf containers, a tokenizer) are replaced by inert stand-ins whose state is read as plain
data, so neither omegaconf nor transformers is needed and no pickled code runs. The EMA is
``checkpoint["ema"]["shadow_params"]``, a list in ``backbone.parameters()`` order. See
``discdiff.models.reference`` for the mapping onto our DiT.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "WEIGHTS_CHOICES",
    "ReferenceWeights",
    "count_blocks",
    "read_reference",
    "reference_parameter_names",
]

WEIGHTS_CHOICES = ("ema", "raw")
_PREFIXES = ("backbone.", "_orig_mod.")


@dataclass(frozen=True)
class ReferenceWeights:
    """Weights read from a reference source, under the reference's key names (no prefix).

    ``layout``: "lightning", "hub-mixin" or "hf-remote-code". ``weights``: "ema", "raw" or
    "as stored" (a directory holds one set). ``config``: whatever configuration the source
    carries, as plain data (the Hydra config of a Lightning checkpoint, a ``config.json``).
    ``prefix``: the prefix the keys had in the source (for error messages).
    """

    state: dict[str, Tensor]
    config: dict[str, Any]
    layout: str
    weights: str
    source: str
    prefix: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class _Opaque(dict):
    """An inert stand-in for a class a checkpoint pickled (an OmegaConf node, a tokenizer...).

    It records its constructor arguments and pickled state and runs nothing. A dict subclass,
    so that pickled dict subclasses (Lightning's ``AttributeDict``) still receive their items.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} (not imported)>"


def _opaque_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Opaque,), {"qualified_name": name})


def _load_pickled(path: Path) -> Any:
    """``torch.load`` through the weights-only unpickler, unknown classes stood in for."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    serialization = torch.serialization
    if not hasattr(serialization, "get_unsafe_globals_in_checkpoint"):  # torch < 2.5
        raise RuntimeError(
            f"{path} pickles classes beyond tensors (e.g. an OmegaConf config); reading it "
            "without running pickled code needs torch >= 2.5"
        )
    names = serialization.get_unsafe_globals_in_checkpoint(path)
    stand_ins = [(_opaque_class(name), name) for name in names]
    try:
        with serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(f"cannot read {path} with the weights-only unpickler: {err}") from err


def _plain(obj: Any, seen: set[int] | None = None) -> Any:
    """Pickled objects as plain data: OmegaConf containers become dicts and lists (their
    ``_content``), value nodes their ``_val``; other stand-ins their public attributes."""
    seen = set() if seen is None else seen
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else f"<tensor {tuple(obj.shape)}>"
    if id(obj) in seen:
        return None
    seen = seen | {id(obj)}
    if isinstance(obj, _Opaque):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict):
            if "_content" in state:
                return _plain(state["_content"], seen)
            if "_val" in state:
                return _plain(state["_val"], seen)
            return {str(k): _plain(v, seen) for k, v in state.items() if not str(k).startswith("_")}
        if len(obj):
            return {str(k): _plain(v, seen) for k, v in obj.items()}
        if len(obj.args) == 1:
            return _plain(obj.args[0], seen)
        return repr(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, seen) for v in obj]
    return repr(obj)


def _strip(state: Mapping[str, Any], where: str) -> tuple[dict[str, Tensor], str]:
    """The backbone's tensors without their prefix (``backbone.``, ``_orig_mod.``)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    prefix = ""
    if any(k.startswith("backbone.") for k in tensors):
        prefix = "backbone."
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    for p in _PREFIXES[1:]:
        if tensors and all(k.startswith(p) for k in tensors):
            tensors = {k[len(p) :]: v for k, v in tensors.items()}
            prefix += p
    if "vocab_embed.embedding" not in tensors:
        sample = sorted(state)[:6]
        raise ValueError(
            f"unknown layout: {where} has no reference DiT weights (no key "
            f"'{prefix or 'backbone.'}vocab_embed.embedding'; keys start {sample})"
        )
    return tensors, prefix


def _read_lightning(path: Path, ckpt: Mapping[str, Any], weights: str) -> ReferenceWeights:
    state, prefix = _strip(ckpt["state_dict"], f"{path} (state_dict)")
    hparams = _plain(ckpt.get("hyper_parameters") or {})
    config = hparams.get("config") if isinstance(hparams, dict) else None
    config = config if isinstance(config, dict) else {}
    extra = {k: ckpt[k] for k in ("epoch", "global_step") if isinstance(ckpt.get(k), int)}
    if isinstance(hparams, dict) and isinstance(hparams.get("vocab_size"), int):
        extra["vocab_size"] = hparams["vocab_size"]
    notes: list[str] = []
    if weights == "ema":
        ema = ckpt.get("ema")
        shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
        if not shadow:
            raise ValueError(
                f"{path} holds no EMA (no checkpoint['ema']['shadow_params']; trained with "
                "training.ema = 0?): convert with weights='raw'"
            )
        state = _apply_ema(state, list(shadow), path, notes)
    return ReferenceWeights(state, config, "lightning", weights, str(path), prefix, notes, extra)


def _apply_ema(
    state: dict[str, Tensor], shadow: list[Any], path: Path, notes: list[str]
) -> dict[str, Tensor]:
    causal = "sigma_map.mlp.0.weight" not in state
    n_blocks = count_blocks(state)
    names = reference_parameter_names(n_blocks, causal=causal)
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"{path}: the raw weights lack {missing[:5]}; cannot place the EMA")
    if len(shadow) < len(names):
        raise ValueError(
            f"{path}: the EMA holds {len(shadow)} tensors, the backbone has {len(names)} parameters"
        )
    out = dict(state)
    for name, value in zip(names, shadow, strict=False):
        if not isinstance(value, Tensor) or value.shape != state[name].shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{path}: EMA tensor for {name} has shape {got}, the weight "
                f"{tuple(state[name].shape)}: the shadow parameters are not in "
                "backbone.parameters() order"
            )
        out[name] = value
    if len(shadow) > len(names):
        notes.append(f"{len(shadow) - len(names)} EMA tensors after the backbone's ignored")
    return out


def _read_weights_file(path: Path) -> dict[str, Any]:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = _load_pickled(path)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"unknown layout: {path} holds a {type(loaded).__name__}, not weights")
    return dict(loaded)


def _directory_weights(directory: Path) -> dict[str, Any]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Any] = {}
            for shard in shards:
                state.update(_read_weights_file(directory / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return _read_weights_file(directory / name)
    raise ValueError(
        f"unknown layout: {directory} has no model.safetensors or pytorch_model.bin (a "
        "PyTorchModelHubMixin or Hugging Face directory), and is not a Lightning checkpoint"
    )


def read_reference(path: str | Path, weights: str = "ema") -> ReferenceWeights:
    """Read the weights and config of a reference source (see the module docstring).

    ``weights`` selects the EMA or the raw weights of a Lightning checkpoint; a directory holds
    one set of weights (whatever was saved), and ``weights`` is then not applied.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHTS_CHOICES}, got {weights!r}")
    path = Path(path)
    if path.is_dir():
        state, prefix = _strip(_directory_weights(path), str(path))
        config_path = path / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        layout = "hf-remote-code" if prefix.startswith("backbone.") else "hub-mixin"
        notes = [] if config_path.is_file() else ["no config.json in the directory"]
        return ReferenceWeights(state, config, layout, "as stored", str(path), prefix, notes)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file or model directory at {path}")
    if path.name.endswith(".safetensors"):
        state, prefix = _strip(_read_weights_file(path), str(path))
        return ReferenceWeights(state, {}, "hub-mixin", "as stored", str(path), prefix)
    loaded = _load_pickled(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        return _read_lightning(path, loaded, weights)
    if isinstance(loaded, Mapping) and any(isinstance(v, Tensor) for v in loaded.values()):
        state, prefix = _strip(loaded, str(path))
        layout = "hf-remote-code" if prefix.startswith("backbone.") else "hub-mixin"
        return ReferenceWeights(state, {}, layout, "as stored", str(path), prefix)
    keys = sorted(loaded)[:8] if isinstance(loaded, Mapping) else type(loaded).__name__
    raise ValueError(
        f"unknown layout: {path} is neither a Lightning checkpoint (a dict with 'state_dict') "
        f"nor a state dict of the reference DiT (found {keys})"
    )


def reference_parameter_names(n_blocks: int, *, causal: bool) -> list[str]:
    """The reference DiT's parameters in ``backbone.parameters()`` order (module registration
    order: embedding, sigma map, blocks, output layer), which is the order of the EMA's
    ``shadow_params``."""
    names = ["vocab_embed.embedding"]
    if not causal:
        names += [f"sigma_map.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    for b in range(n_blocks):
        names += [f"blocks.{b}.{n}" for n in ("norm1.weight", "attn_qkv.weight",
                                               "attn_out.weight", "norm2.weight")]  # fmt: skip
        names += [f"blocks.{b}.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        if not causal:
            names += [f"blocks.{b}.adaLN_modulation.{p}" for p in ("weight", "bias")]
    names += ["output_layer.norm_final.weight", "output_layer.linear.weight",
              "output_layer.linear.bias"]  # fmt: skip
    if not causal:
        names += [f"output_layer.adaLN_modulation.{p}" for p in ("weight", "bias")]
    return names


def count_blocks(state: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"the blocks are not numbered 0..n-1: found {sorted(indices)}")
    return len(indices)
