"""Released checkpoints of the reference code (Duo, MDLM) as discdiff ``DiT`` models.

The reference DiT and ours are the same network: the same parameters (our names are shorter),
the same rotary convention (GPT-NeoX halves, base 10000, on q and k), the same adaLN-zero order
(shift, scale, gate for attention, then for the MLP), LayerNorms without bias. Converting is a
pure renaming of keys; the logits agree to float32 rounding.

Three sources are read:

- **Lightning checkpoints** (``*.ckpt``): ``state_dict`` with keys ``backbone.*``; the EMA as
  ``checkpoint["ema"]["shadow_params"]``, a list in ``backbone.parameters()`` order; the Hydra
  config under ``hyper_parameters["config"]``. The file is unpickled with torch's weights-only
  unpickler; classes it would need (OmegaConf containers, a tokenizer) are replaced by inert
  stand-ins whose state is read as plain data, so neither omegaconf nor transformers is needed
  and no pickled code runs.
- **PyTorchModelHubMixin directories** (``model.safetensors`` + ``config.json``): the module's
  own keys (``vocab_embed.embedding``, ...); ``config.json`` may carry only ``vocab_size``.
- **Hugging Face remote-code directories** (the ``hf_dit`` backbone: MDLM's
  ``modeling_mdlm.py`` and the Duo hub repos): keys ``backbone.*`` and a config with
  ``hidden_dim``, ``n_heads``, ``n_blocks``, ``cond_dim``, ``time_conditioning``.

The architecture is read from the tensors where they determine it (vocabulary, hidden size,
blocks, conditioning width, MLP ratio, sinusoid width, causal or not; the head count from the
``rotary_emb.inv_freq`` buffer when it was saved), then from the source's config, then from
``overrides``; a field none of them gives is an error that names it.

Renames (reference -> discdiff):

    vocab_embed.embedding              -> embed.weight
    blocks.i.attn_qkv.weight           -> blocks.i.qkv.weight
    output_layer.norm_final.weight     -> final.norm.weight
    output_layer.*                     -> final.*
    rotary_emb.inv_freq                -> (dropped: recomputed from the head size)
    everything else (sigma_map.*, norms, attn_out, mlp, adaLN_modulation) keeps its name.

Vocabulary: the reference adds ids to the tokenizer's. With GPT-2 (50257 ids) its Duo models
have K = 50258 (a [PAD] id), MDLM appends its mask id (50257, K = 50258) and the AR model
has the same 50258 logits, the extra one never a target. ``ConvertedModel.info`` records
what the source says (algorithm, parameterisation, time conditioning, mask id).
Soft inputs differ: the reference embeds ``softmax(x) @ E`` of a float input, ours ``p @ E``.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from discdiff.models import DiT, DiTConfig
from discdiff.models.dit import pad_output_rows

__all__ = [
    "INFO_NAME",
    "ConvertedModel",
    "ReferenceWeights",
    "convert_state_dict",
    "infer_config",
    "load_reference",
    "read_reference",
    "reference_parameter_names",
]

INFO_NAME = "reference.json"
"""Written beside ``config.json`` by ``discdiff.convert``: where the weights came from."""

WEIGHTS_CHOICES = ("ema", "raw")
_PREFIXES = ("backbone.", "_orig_mod.")
_DROPPED = ("rotary_emb.inv_freq",)
_RENAMES = (  # applied in order to the start of a key
    ("vocab_embed.embedding", "embed.weight"),
    ("output_layer.norm_final.", "final.norm."),
    ("output_layer.", "final."),
)
_BLOCK_RENAMES = {"attn_qkv": "qkv"}


# --- the key mapping ----------------------------------------------------------------------------


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.fullmatch(r"blocks\.(\d+)\.([A-Za-z_]+)(\..*)?", key)
    if m and m.group(2) in _BLOCK_RENAMES:
        return f"blocks.{m.group(1)}.{_BLOCK_RENAMES[m.group(2)]}{m.group(3) or ''}"
    return key


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The reference DiT's state dict (keys without ``backbone.``) in discdiff's names.

    A pure renaming: the tensors are the same objects; the rotary buffer is dropped.
    """
    return {_rename(k): v for k, v in state.items() if k not in _DROPPED}


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


# --- reading a source ---------------------------------------------------------------------------


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
    n_blocks = _count_blocks(state)
    names = reference_parameter_names(n_blocks, causal=causal)
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"{path}: the raw weights lack {missing[:5]}; cannot place the EMA")
    if len(shadow) < len(names):
        raise ValueError(
            f"{path}: the EMA holds {len(shadow)} tensors, the backbone has {len(names)} "
            "parameters"
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


# --- the architecture ---------------------------------------------------------------------------


def _count_blocks(state: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"the blocks are not numbered 0..n-1: found {sorted(indices)}")
    return len(indices)


def _lookup(config: Mapping[str, Any], *paths: str) -> tuple[Any, str] | None:
    """The first of the dotted ``paths`` present in the (nested) config, and its path."""
    for dotted in paths:
        node: Any = config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if node is not None:
                return node, dotted
    return None


_CONFIG_PATHS = {
    "n_heads": ("model.n_heads", "config.model.n_heads", "n_heads", "num_heads"),
    "dropout": ("model.dropout", "config.model.dropout", "dropout"),
    "cond_dim": ("model.cond_dim", "config.model.cond_dim", "cond_dim"),
    "hidden_size": ("model.hidden_size", "config.model.hidden_size", "hidden_dim",
                    "hidden_size"),  # fmt: skip
    "n_blocks": ("model.n_blocks", "config.model.n_blocks", "n_blocks"),
}


def _shape(state: Mapping[str, Tensor], key: str, dim: int) -> int:
    return int(state[key].shape[dim])


def infer_config(
    ref: ReferenceWeights, **overrides: Any
) -> tuple[DiTConfig, dict[str, str]]:
    """The ``DiTConfig`` of the reference weights, and where each field came from.

    Shapes decide what they determine; the source's config and ``overrides`` fill in the rest
    (an override that contradicts a shape is an error). A field nobody gives is an error that
    names it.
    """
    known = {f.name for f in fields(DiTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown DiTConfig fields {unknown}; known fields: {sorted(known)}")
    state, cfg = ref.state, ref.config
    emb = "vocab_embed.embedding"
    p = ref.prefix
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, value: Any, where: str) -> None:
        values[name], sources[name] = value, where

    put("vocab_size", _shape(state, emb, 0), f"shape of {p}{emb}")
    put("hidden_size", _shape(state, emb, 1), f"shape of {p}{emb}")
    put("n_blocks", _count_blocks(state), f"{p}blocks.* keys")
    causal = "sigma_map.mlp.0.weight" not in state
    put("causal", causal, f"{'no ' if causal else ''}{p}sigma_map in the weights")
    if not causal:
        w = "sigma_map.mlp.0.weight"
        put("cond_dim", _shape(state, w, 0), f"shape of {p}{w}")
        put("frequency_dim", _shape(state, w, 1), f"shape of {p}{w}")
    if values["n_blocks"]:
        w = "blocks.0.mlp.0.weight"
        if w in state:
            width = _shape(state, w, 0)
            if width % values["hidden_size"]:
                raise ValueError(f"MLP width {width} is not a multiple of the hidden size")
            put("mlp_ratio", width // values["hidden_size"], f"shape of {p}{w}")
    put("tie_weights", False, "the reference never ties the output projection")
    inv_freq = state.get("rotary_emb.inv_freq")
    if inv_freq is not None and inv_freq.ndim == 1 and inv_freq.numel() > 0:
        head_dim = 2 * inv_freq.numel()
        if values["hidden_size"] % head_dim:
            raise ValueError(f"{p}rotary_emb.inv_freq implies head size {head_dim}, which does "
                             f"not divide the hidden size {values['hidden_size']}")  # fmt: skip
        put("n_heads", values["hidden_size"] // head_dim,
            f"{p}rotary_emb.inv_freq (head size {head_dim})")  # fmt: skip
        if inv_freq.numel() > 1:
            base = float(inv_freq[1].double()) ** (-head_dim / 2)
            if not math.isclose(base, 10000.0, rel_tol=1e-3):
                put("rotary_base", base, f"{p}rotary_emb.inv_freq")
    for name in ("n_heads", "dropout", "cond_dim"):
        if name in values:
            continue
        found = _lookup(cfg, *_CONFIG_PATHS[name])
        if found is not None:
            put(name, found[0], f"source config {found[1]}")
    # Whatever the config says about fields the shapes fixed must agree with them.
    for name in ("hidden_size", "n_blocks", "n_heads"):
        found = _lookup(cfg, *_CONFIG_PATHS[name])
        if found is not None and name in values and found[0] != values[name]:
            raise ValueError(
                f"the source config says {found[1]} = {found[0]}, but {sources[name]} gives "
                f"{name} = {values[name]}"
            )
    for name, value in overrides.items():
        if name in values and value != values[name] and not sources[name].startswith("source"):
            raise ValueError(
                f"override {name}={value!r} contradicts the weights ({sources[name]} gives "
                f"{values[name]!r})"
            )
        put(name, value, "override")
    if "n_heads" not in values:
        raise ValueError(
            f"the number of attention heads is missing: {ref.source} has no "
            "rotary_emb.inv_freq buffer and its config gives no n_heads; pass it, e.g. "
            "DiT.from_reference(path, n_heads=12) or --n-heads 12 (the paper's sizes: tiny 8, "
            "small 12, medium 16 heads)"
        )
    return DiTConfig(**values), sources


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertedModel:
    """A converted model and, as JSON-able ``info``, where everything came from."""

    model: DiT
    info: dict[str, Any]


def _describe(ref: ReferenceWeights, config: DiTConfig) -> dict[str, Any]:
    cfg = ref.config
    algo = _lookup(cfg, "algo.name", "config.algo.name")
    param = _lookup(cfg, "algo.parameterization", "config.algo.parameterization")
    time_cond = _lookup(cfg, "algo.time_conditioning", "config.algo.time_conditioning",
                        "time_conditioning")  # fmt: skip
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
    tokenizer = _lookup(cfg, "data.tokenizer_name_or_path", "config.data.tokenizer_name_or_path")
    length = _lookup(cfg, "model.length", "config.model.length", "model_length")
    name = algo[0] if algo else model_type
    parameterization = param[0] if param else None
    if config.causal:
        kind = "ar"
    elif parameterization == "subs" or name in ("mdlm", "d3pm", "sedd"):
        kind = "mdlm"
    elif parameterization == "mean" or (name or "").startswith(("duo", "distill", "ot-")):
        kind = "duo"
    else:
        kind = None
    info: dict[str, Any] = {
        "source": ref.source,
        "layout": ref.layout,
        "weights": ref.weights,
        "algo": name,
        "parameterization": parameterization,
        "objective": kind,
        "time_conditioning": time_cond[0] if time_cond else (None if kind != "duo" else True),
        "tokenizer": tokenizer[0] if tokenizer else None,
        "length": length[0] if length else None,
        "vocab_size": config.vocab_size,
        **ref.extra,
    }
    if kind == "mdlm":
        info["mask_id"] = config.vocab_size - 1
    if ref.notes:
        info["notes"] = list(ref.notes)
    return info


def _check_complete(converted: dict[str, Tensor], model: DiT, prefix: str) -> None:
    expected = model.state_dict()
    names = reference_parameter_names(model.config.n_blocks, causal=model.config.causal)
    back = {_rename(k): k for k in names}
    missing = sorted(prefix + back.get(k, k) for k in set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [
        f"{prefix}{back.get(k, k)}: {tuple(converted[k].shape)}, expected {tuple(t.shape)}"
        for k, t in expected.items()
        if k in converted and converted[k].shape != t.shape
    ]
    if missing:
        raise ValueError(f"the source lacks weights {missing[:6]}" + (
            f" and {len(missing) - 6} more" if len(missing) > 6 else ""))  # fmt: skip
    if unexpected:
        raise ValueError(
            f"unknown layout: keys {unexpected[:6]} have no counterpart in discdiff's DiT"
        )
    if wrong:
        raise ValueError(f"shape mismatches: {wrong[:6]}")


def load_reference(path: str | Path, weights: str = "ema", **overrides: Any) -> ConvertedModel:
    """A discdiff ``DiT`` holding a reference checkpoint's weights (see the module docstring).

    ``weights``: "ema" (default) or "raw" for Lightning checkpoints. ``overrides``: DiTConfig
    fields the source does not give (e.g. ``n_heads``) or that do not change the weights
    (``dropout``). The model is in eval mode, in the stored weights' dtype.
    """
    ref = read_reference(path, weights)
    config, sources = infer_config(ref, **overrides)
    model = DiT(config)
    converted = pad_output_rows(convert_state_dict(ref.state), model)  # K rows -> padded
    _check_complete(converted, model, ref.prefix)
    dtypes = {t.dtype for t in converted.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(converted)
    info = _describe(ref, config)
    info["config_sources"] = sources
    return ConvertedModel(model.eval(), info)


def from_reference(cls: type[DiT], path: str | Path, weights: str = "ema",
                   **overrides: Any) -> DiT:  # fmt: skip
    """``DiT.from_reference``: the model of ``load_reference`` (as an instance of ``cls``)."""
    model = load_reference(path, weights, **overrides).model
    if not isinstance(model, cls):
        converted = cls(model.config).to(dtype=next(model.parameters()).dtype)
        converted.load_state_dict(model.state_dict())
        model = converted.eval()
    return model
