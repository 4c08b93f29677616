"""Convert a released reference checkpoint (Duo, MDLM) into a discdiff model directory.

    python -m discdiff.convert duo.ckpt models/duo                     # EMA weights (default)
    python -m discdiff.convert duo.ckpt models/duo-raw --weights raw
    python -m discdiff.convert hub-snapshot/ models/duo --n-heads 12   # config.json lacks heads

SRC: a Lightning checkpoint, a PyTorchModelHubMixin directory or a Hugging Face remote-code
directory (see ``discdiff.models.reference``). DST gets ``config.json`` and
``model.safetensors`` (load with ``DiT.from_pretrained(DST)``) and ``reference.json``: the
source, the weights taken, what it says about the algorithm (duo / mdlm / ar, time
conditioning, mask id) and where every architecture field came from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["convert", "main"]


def convert(src: str | Path, dst: str | Path, weights: str = "ema", **overrides: Any) -> dict:
    """Write the converted model into ``dst``; returns the ``reference.json`` contents."""
    from discdiff.models import DiT
    from discdiff.models.reference import INFO_NAME, load_reference

    converted = load_reference(src, weights, model_class=DiT, **overrides)
    dst = Path(dst)
    converted.model.save_pretrained(dst)
    (dst / INFO_NAME).write_text(json.dumps(converted.info, indent=2) + "\n")
    return converted.info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m discdiff.convert",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("src", help="Lightning .ckpt, or a HubMixin / Hugging Face directory")
    p.add_argument("dst", help="output directory (DiT.from_pretrained loads it)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="EMA or raw weights of a Lightning checkpoint")  # fmt: skip
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads, when the source does not give them")  # fmt: skip
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--cond-dim", type=int, default=None,
                   help="conditioning width of a causal (AR) model (unused by it)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in (("n_heads", args.n_heads), ("dropout", args.dropout),
                                   ("cond_dim", args.cond_dim)) if v is not None}  # fmt: skip
    try:
        info = convert(args.src, args.dst, args.weights, **overrides)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"discdiff.convert: {err}") from err
    cfg = json.loads((Path(args.dst) / "config.json").read_text())
    print(
        f"converted {info['source']} ({info['layout']}, weights {info['weights']}) -> "
        f"{args.dst}: K={cfg['vocab_size']}, hidden {cfg['hidden_size']}, "
        f"{cfg['n_blocks']} blocks, {cfg['n_heads']} heads, "
        f"{'causal' if cfg['causal'] else 'diffusion'}; objective {info['objective']}"
    )
    return info


if __name__ == "__main__":
    main()
