"""The command line of ``python -m examples.replicate`` (and ``make replicate``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from examples.replicate.pipeline import run_replication
from examples.replicate.report import report_from_raw
from examples.replicate.scales import SCALES

__all__ = ["main"]

_DESCRIPTION = (
    "A CPU-scale replication of the Duo paper's claims: ``docs/replication.md`` and its plots."
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), run the replication or re-render it from
    ``OUT/raw.json`` (``--render-only``) and return the summary (``results.json``)."""
    p = argparse.ArgumentParser(prog="python -m examples.replicate",
                                description=_DESCRIPTION)  # fmt: skip
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --scale quick")
    p.add_argument("--out", default="runs/replicate", help="model runs and results.json")
    p.add_argument("--docs", default="docs", help="where replication.md and the plots go")
    p.add_argument("--data", default="shakespeare", help="training text source")
    p.add_argument("--zero-shot", default="milton", help="zero-shot corpus ('' for none)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--gen-steps", default=None, help="sampling step counts, e.g. 256,64,16,8,4")
    p.add_argument("--steps", type=int, default=None, help="override the training steps")
    p.add_argument("--only", choices=("blocks",), default=None,
                   help="run one section alone and print its table (blocks: block diffusion; "
                   "the report is not rewritten)")
    p.add_argument("--render-only", action="store_true",
                   help="re-print the tables and rewrite the report and plots from OUT/raw.json")
    args = p.parse_args(argv)
    if args.render_only:
        raw = json.loads((Path(args.out) / "raw.json").read_text())
        return report_from_raw(raw, out=Path(args.out), docs=Path(args.docs), rendered_again=True)
    scale = SCALES["quick" if args.quick else args.scale]
    if args.gen_steps:
        scale = replace(scale, gen_steps=tuple(int(s) for s in args.gen_steps.split(",") if s))
    if args.steps:
        scale = replace(scale, steps=args.steps, curriculum_end=args.steps // 2)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m examples.replicate", *given])
    return run_replication(scale=scale, out=Path(args.out), docs=Path(args.docs), data=args.data,
                           zero_shot=args.zero_shot, workers=args.workers, threads=args.threads,
                           command=command, only=args.only)  # fmt: skip


