"""Loading the model a command names: a run directory of ``examples.train`` or a released
checkpoint converted by ``python -m discdiff.convert``, as a ``TrainedRun``. Shared by
``examples.evaluate`` and ``examples.sample``: ``add_run_arguments`` adds the arguments that
name it, ``load_run`` loads it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from examples.backbone import TrainedRun, load_trained

__all__ = ["add_run_arguments", "is_converted_model", "load_converted", "load_run"]


# --- converted reference models (discdiff.convert) -----------------------------------------------


def is_converted_model(path: str | Path) -> bool:
    """True for a model directory written by ``discdiff.convert`` / ``DiT.save_pretrained``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        info = json.loads(config.read_bytes())
    except ValueError:  # not JSON: not a converted model (load_trained says what is wrong)
        return False
    return isinstance(info, dict) and info.get("model_type") == "discdiff.DiT"


def load_converted(
    directory: str | Path, *, tokenizer: str = "gpt2-bpe", tokenizer_files: Sequence[str] = (),
    objective: str | None = None, seq_len: int | None = None, data: str | None = None,
    device: str | torch.device = "cpu",
) -> TrainedRun:  # fmt: skip
    """A converted reference model as a ``TrainedRun``, with a tokenizer from local files.

    The objective (duo, mdlm or ar) comes from ``reference.json`` unless given. The model's
    vocabulary may exceed the tokenizer's (the reference adds ids: Duo a [PAD] id, MDLM its mask
    id, the AR model an unused mask logit): Duo keeps all K ids in its NELBO, MDLM takes the last
    one as its mask, the AR model is scored over the tokenizer's ids only, as the reference does.
    """
    from discdiff.diffusion import MaskedDiffusion
    from discdiff.harness import FirstLogits
    from discdiff.models import DiT
    from examples.config import apply_overrides, preset
    from examples.objectives import build_objective
    from examples.tokenizer import build_tokenizer

    directory = Path(directory)
    info_path = directory / "reference.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    model: torch.nn.Module = DiT.from_pretrained(directory, device=device).eval()
    mc = model.config
    kind = objective or info.get("objective") or ("ar" if mc.causal else None)
    if kind not in ("duo", "mdlm", "ar"):
        raise ValueError(f"{directory}: say which model it is with --objective duo|mdlm|ar "
                         "(its reference.json does not)")  # fmt: skip
    if (kind == "ar") != mc.causal:
        raise ValueError(f"{directory} holds a {'causal' if mc.causal else 'diffusion'} model, "
                         f"not one for objective {kind!r}")  # fmt: skip
    if not tokenizer_files and tokenizer in ("gpt2-bpe", "bert-wordpiece", "json"):
        raise ValueError(f"a converted model needs its tokenizer's files: --tokenizer "
                         f"{tokenizer} --tokenizer-files ... (gpt2-bpe: vocab.json merges.txt)")
    tok = build_tokenizer(tokenizer, files=list(tokenizer_files))
    data_vocab = mc.vocab_size - 1 if kind == "mdlm" else mc.vocab_size
    if tok.vocab_size > data_vocab:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids, the model's data vocabulary "
                         f"{data_vocab}: not the tokenizer it was trained with")  # fmt: skip
    cfg = apply_overrides(preset("owt"), {
        "data.source": data or "hf:openwebtext", "data.zero_shot": "",
        "data.tokenizer": tokenizer, "data.tokenizer_files": [str(f) for f in tokenizer_files],
        "data.seq_len": int(seq_len or info.get("length") or 1024), "train.objective": kind,
        "duo.curriculum_end": 0,
    })  # fmt: skip
    if kind == "ar":
        obj = build_objective(cfg, tok.vocab_size, bos_id=tok.bos_id)
        model = FirstLogits(model, tok.vocab_size).eval()
    else:
        obj = build_objective(cfg, data_vocab, bos_id=tok.bos_id)
        if kind == "mdlm" and info.get("time_conditioning"):
            obj.diffusion = MaskedDiffusion(data_vocab, eps=cfg.duo.eps, time_conditioned=True)
    return TrainedRun(model, cfg, tok, obj, int(info.get("global_step") or 0), directory)


def load_run(args: argparse.Namespace) -> TrainedRun:
    """The run named on the command line: an examples.train run or a converted model."""
    if is_converted_model(args.run):
        return load_converted(
            args.run, tokenizer=args.tokenizer, tokenizer_files=args.tokenizer_files or (),
            objective=args.objective, seq_len=args.seq_len, data=args.data, device=args.device,
        )  # fmt: skip
    return load_trained(args.run, weights=args.weights, device=args.device)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that name the model to load (``load_run``): RUN, ``--weights``,
    ``--device`` and a converted model's tokenizer, objective and length."""
    p.add_argument("run", help="a run directory written by examples.train, or a model "
                   "directory written by discdiff.convert")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="a run's EMA or raw weights (a converted model holds one set)")
    p.add_argument("--device", default="cpu")
    c = p.add_argument_group("converted reference models (discdiff.convert)")
    c.add_argument("--tokenizer", default="gpt2-bpe",
                   help="its tokenizer (examples.tokenizer.build_tokenizer kinds)")
    c.add_argument("--tokenizer-files", nargs="+", default=None,
                   help="local tokenizer files, e.g. gpt2 vocab.json merges.txt")
    c.add_argument("--objective", choices=("duo", "mdlm", "ar"), default=None,
                   help="the model's kind (default: from its reference.json)")
    c.add_argument("--seq-len", type=int, default=None, help="default: reference.json or 1024")
    c.add_argument("--data", default=None,
                   help="validation corpus (a file, directory or hf:<name>); none: no validation")
