"""The backbone of a run: a ``discdiff.models.DiT`` or any module from ``--model.factory``,
built for training and rebuilt from a checkpoint (``load_trained``).

A factory is called as ``function(vocab_size, causal, *, seq_len, mask_id, num_classes,
**sizes, **options)``, the keywords any backbone may need:

- ``vocab_size``: the logits it returns per position (MDLM: the data vocabulary + the mask id);
- ``causal``: True for the autoregressive objective (no look-ahead), else False;
- ``seq_len``: the tokens per sequence (``--data.seq_len``), e.g. for position embeddings;
- ``mask_id``: the id of the mask token for masked diffusion (MDLM, SDTT), else None;
- ``num_classes``: the class labels of a labelled run (``--data.labels``; the model is then
  called with ``label=`` (B,) ids, ``num_classes`` meaning "no label"), else None;
- ``hidden``, ``blocks``, ``heads``, ``dropout``: those of ``--model.*`` that are set;
- the JSON object of ``--model.options``.

The DiT-only fields (``--model.preset``, ``--model.cond_dim``) are not passed.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from examples import distributed as D
from examples.checkpoint import load_checkpoint
from examples.config import Config, ModelConfig, load_config
from examples.objectives import Objective, build_objective
from examples.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "TrainedRun",
    "backbone_kwargs",
    "build_model",
    "factory_kwargs",
    "load_trained",
    "model_meta",
    "resolve_factory",
]

_DIT_ONLY = ("preset", "cond_dim")


def resolve_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named by ``"package.module:function"`` (``--model.factory``)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"model.factory must be 'package.module:function', got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model.factory {path!r}: cannot import {module_name!r} ({err})") from err
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"model.factory {path!r}: {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"model.factory {path!r} is not callable")
    return fn


def backbone_kwargs(objective: Objective, seq_len: int,
                    num_classes: int | None) -> dict[str, Any]:  # fmt: skip
    """What any backbone of this run needs besides (vocab_size, causal): the sequence length,
    the mask id (masked diffusion; else None) and the number of class labels (or None)."""
    mask_id = getattr(getattr(objective, "diffusion", None), "mask_id", None)
    return {"seq_len": seq_len, "mask_id": mask_id, "num_classes": num_classes}


def factory_kwargs(mcfg: ModelConfig, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keywords a ``--model.factory`` callable gets besides (vocab_size, causal): ``run``
    (``backbone_kwargs``: seq_len, mask_id, num_classes), the sizes set in ``ModelConfig``
    (hidden, blocks, heads, dropout; not the DiT-only preset and cond_dim) and the JSON object
    of ``--model.options``."""
    kwargs = dict(run or {})
    kwargs.update({k: v for k, v in asdict(mcfg).items()
                   if k not in ("factory", "options", *_DIT_ONLY) and v is not None})  # fmt: skip
    if mcfg.options:
        extra = json.loads(mcfg.options)
        if not isinstance(extra, dict):
            raise ValueError(f"model.options must be a JSON object, got {mcfg.options!r}")
        kwargs.update(extra)
    return kwargs


def build_model(
    mcfg: ModelConfig, vocab_size: int, *, seq_len: int, causal: bool = False,
    num_classes: int | None = None, mask_id: int | None = None,
) -> nn.Module:  # fmt: skip
    """A ``discdiff.models.DiT`` from the config's preset and overrides, or, with
    ``mcfg.factory = "package.module:function"``, ``function(vocab_size, causal, seq_len=,
    mask_id=, num_classes=, **sizes, **options)`` (module docstring): any ``nn.Module`` with
    the denoiser's call signature ``model(z_t, sigma, **cond) -> logits (B, L, vocab_size)``.
    ``num_classes``: the labels of a labelled run (``--data.labels``)."""
    if mcfg.factory:
        run = {"seq_len": seq_len, "mask_id": mask_id, "num_classes": num_classes}
        model = resolve_factory(mcfg.factory)(vocab_size, causal, **factory_kwargs(mcfg, run))
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model.factory {mcfg.factory!r} returned a {type(model).__name__}, not an "
                "nn.Module (the loop needs its parameters for the optimiser, EMA and checkpoints)"
            )
        return model
    from discdiff.models import DiT

    names = {"hidden": "hidden_size", "blocks": "n_blocks", "heads": "n_heads",
             "cond_dim": "cond_dim", "dropout": "dropout"}  # fmt: skip
    overrides = {names[k]: v for k, v in asdict(mcfg).items() if k in names and v is not None}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if mcfg.block_size is not None:
        overrides["block_size"] = mcfg.block_size
    return DiT.from_preset(mcfg.preset, vocab_size=vocab_size, causal=causal, **overrides)


def model_meta(
    model: nn.Module, vocab_size: int, objective: str, mcfg: ModelConfig | None = None,
    *, causal: bool = False, model_vocab_size: int | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint records of its model: a DiT's config, or for a ``--model.factory``
    backbone the factory and its arguments (``run``: ``backbone_kwargs``), from which
    ``load_trained`` rebuilds it."""
    if mcfg is not None and mcfg.factory:
        spec = {"factory": mcfg.factory, "vocab_size": model_vocab_size, "causal": causal,
                "kwargs": factory_kwargs(mcfg, run)}  # fmt: skip
        return {"vocab_size": vocab_size, "model": spec, "objective": objective}
    config = getattr(D.unwrap(model), "config", None)
    return {
        "vocab_size": vocab_size,
        "model": config.to_dict() if hasattr(config, "to_dict") else {},
        "objective": objective,
    }


@dataclass
class TrainedRun:
    """A trained model (EMA weights by default) with its config, tokenizer and objective."""

    model: nn.Module
    config: Config
    tokenizer: TextTokenizer
    objective: Objective
    step: int
    run_dir: Path


def load_trained(
    run_dir: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu",
    build_objective_too: bool = True,
) -> TrainedRun:  # fmt: skip
    """Rebuild the model of a run directory from its checkpoint (``weights``: ema or raw)."""
    from discdiff.models import DiT, DiTConfig

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be ema or raw, got {weights!r}")
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir, map_location="cpu")
    cfg = load_config(run_dir / "config.json")
    tokenizer = load_tokenizer(run_dir)
    meta = state["meta"]
    if meta["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(
            f"{run_dir}: the checkpoint's vocabulary ({meta['vocab_size']}) does not match the "
            f"saved tokenizer ({tokenizer.vocab_size})"
        )
    spec = meta["model"]
    if "factory" in spec:  # a --model.factory backbone: rebuilt by the same call
        model: nn.Module = resolve_factory(spec["factory"])(
            spec["vocab_size"], spec["causal"], **spec["kwargs"]
        )
    else:
        model = DiT(DiTConfig.from_dict(spec))
    model.load_state_dict(state["model"])
    if weights == "ema":
        ema_state = state["ema"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in ema_state:
                    p.copy_(ema_state[name])
    model = model.to(device).eval()
    objective: Any = None
    if build_objective_too:
        objective = build_objective(cfg, tokenizer.vocab_size, bos_id=tokenizer.bos_id)
    return TrainedRun(model, cfg, tokenizer, objective, int(state["step"]), run_dir)
