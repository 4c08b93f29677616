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

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from discdiff.models.config import DiTConfig
from discdiff.models.projection import pad_output_rows
from discdiff.models.reference_io import (
    ReferenceWeights,
    count_blocks,
    read_reference,
    reference_parameter_names,
)

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

M = TypeVar("M", bound=nn.Module)

INFO_NAME = "reference.json"
"""Written beside ``config.json`` by ``discdiff.convert``: where the weights came from."""

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


# --- the architecture ---------------------------------------------------------------------------


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
    "hidden_size": (
        "model.hidden_size",
        "config.model.hidden_size",
        "hidden_dim",
        "hidden_size",
    ),  # fmt: skip
    "n_blocks": ("model.n_blocks", "config.model.n_blocks", "n_blocks"),
}


def _shape(state: Mapping[str, Tensor], key: str, dim: int) -> int:
    return int(state[key].shape[dim])


def infer_config(ref: ReferenceWeights, **overrides: Any) -> tuple[DiTConfig, dict[str, str]]:
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
    put("n_blocks", count_blocks(state), f"{p}blocks.* keys")
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
class ConvertedModel(Generic[M]):
    """A converted model and, as JSON-able ``info``, where everything came from."""

    model: M
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


def _check_complete(
    converted: dict[str, Tensor], model: nn.Module, config: DiTConfig, prefix: str
) -> None:
    """Raise a ValueError naming (in the reference's names) missing, unexpected and mis-shaped
    weights of ``model``, the DiT built from ``config``."""
    expected = model.state_dict()
    names = reference_parameter_names(config.n_blocks, causal=config.causal)
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


def load_reference(
    path: str | Path,
    weights: str = "ema",
    *,
    model_class: Callable[[DiTConfig], M],
    **overrides: Any,
) -> ConvertedModel[M]:
    """A discdiff DiT holding a reference checkpoint's weights (see the module docstring), built
    as ``model_class(config)``: ``load_reference(path, model_class=DiT)``.

    ``weights``: "ema" (default) or "raw" for Lightning checkpoints. ``overrides``: DiTConfig
    fields the source does not give (e.g. ``n_heads``) or that do not change the weights
    (``dropout``). The model is in eval mode, in the stored weights' dtype.
    ``DiT.from_reference`` is this function's ``model`` for its class.
    """
    ref = read_reference(path, weights)
    config, sources = infer_config(ref, **overrides)
    model = model_class(config)
    converted = pad_output_rows(convert_state_dict(ref.state), config)  # K rows -> padded
    _check_complete(converted, model, config, ref.prefix)
    dtypes = {t.dtype for t in converted.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtype=dtypes.pop())
    model.load_state_dict(converted)
    info = _describe(ref, config)
    info["config_sources"] = sources
    return ConvertedModel(model.eval(), info)
