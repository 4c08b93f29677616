"""The summary rows a benchmark suite writes as JSON (``--json PATH``) for ``benchmarks.run``.

One row: ``metric`` (what, with the sizes), ``unit``, ``ours``, ``baseline``, ``ratio``
(ours / baseline unless given), ``target`` (text such as "<= 0.25", or "-"), ``met`` (True,
False, or None for a measurement without a verdict) and ``source`` ("main"; "main; baseline:
reference figure" where the baseline is a published figure). The suite writes what it printed,
so every number of the summary table was printed above it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_json_option", "row", "write_rows"]


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json PATH``: where the suite writes its summary rows (``benchmarks.run`` passes it)."""
    parser.add_argument(
        "--json", metavar="PATH", default=None,
        help="write the summary rows as JSON to PATH (read by benchmarks.run)",
    )  # fmt: skip


def row(metric: str, unit: str, ours: float | None, baseline: float | None, *,
        ratio: float | None = None, target: str = "-", met: bool | None = None,
        source: str = "main") -> dict[str, Any]:  # fmt: skip
    """One summary row; ``ratio`` defaults to ours / baseline."""
    if ratio is None and ours is not None and baseline:
        ratio = ours / baseline
    return {"metric": metric, "unit": unit, "ours": ours, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met, "source": source}  # fmt: skip


def write_rows(path: str | None, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path is None:
        return
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")
