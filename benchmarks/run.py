"""``make bench``: every benchmark suite beside its baseline, then one summary table.

    python -m benchmarks.run                 # everything (about 10-20 min on 2 CPU cores)
    python -m benchmarks.run --quick         # smaller sizes (a few minutes)
    python -m benchmarks.run --only losses,dcd_step --skip-pytest

Three parts, all in subprocesses with one torch thread each (the timings are per core):

1. pytest-benchmark over the ``test_*`` functions of every ``benchmarks/bench_*.py``, saved to
   ``.benchmarks/<timestamp>.json``;
2. each suite's side-by-side script (``python -m benchmarks.bench_<suite> --json PATH``), its
   output shown as it runs; it writes its summary rows to PATH
   (``.benchmarks/<timestamp>-<suite>.json``, the format of ``benchmarks/rows.py``);
3. the summary tables (suite, metric, ours, baseline, ratio, target, met), one for the speed
   comparisons and one for the known-answer experiments, built from the suites' JSON rows and
   from the pytest-benchmark pairs (ours vs baseline in the same process): no number is read
   back from printed text, and every number in them was printed above (the JSON keeps full
   precision). Saved as ``.benchmarks/<timestamp>-summary.json`` with the machine (CPU model,
   cores, torch version, threads) and each suite's output.

Baselines are measured in the same process as ours, except where a suite compares with a
published figure of the reference implementation (marked "reference figure"). A suite that
writes no readable JSON shows "n/a" in the table instead of failing the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discdiff.testing import machine_info

__all__ = ["SUITES", "Row", "Suite", "grouped_tables", "machine_info", "main", "read_rows",
           "summary_table"]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent


# --- rows ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the summary: ``ratio`` = ours / baseline (lower is better for times)."""

    suite: str
    metric: str
    unit: str = ""
    ours: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None
    source: str = "main"

    def __post_init__(self) -> None:
        if self.ratio is None and self.ours is not None and self.baseline:
            self.ratio = self.ours / self.baseline


def _missing(suite: str, why: str) -> list[Row]:
    return [Row(suite, f"n/a ({why})", source="-")]


def read_rows(suite: str, path: Path) -> list[Row]:
    """The rows a suite wrote to ``path`` (``benchmarks/rows.py``'s format); an n/a row when the
    file is missing or not a list of rows. A numeric ``target`` t means "<= t"."""
    if not path.is_file():
        return _missing(suite, "no JSON written")
    try:
        data = json.loads(path.read_text())
        rows = []
        for r in data:
            target = r.get("target")
            if target is None:
                target = "-"
            elif not isinstance(target, str):
                target = f"<= {target:g}"
            met = r.get("met")
            rows.append(Row(suite, r["metric"], r.get("unit", ""), r.get("ours"),
                            r.get("baseline"), r.get("ratio"), target,
                            None if met is None else bool(met),
                            r.get("source", "main")))  # fmt: skip
    except (ValueError, TypeError, KeyError) as err:  # a changed format must not sink the summary
        return _missing(suite, f"unreadable JSON: {type(err).__name__}")
    return rows or _missing(suite, "no rows in the JSON")


# --- suites -------------------------------------------------------------------------------------


SPEED, KNOWN_ANSWER = "speed", "known-answer"
KINDS = {
    SPEED: "speed comparisons (ours beside a baseline run in the same process)",
    KNOWN_ANSWER: "known-answer experiments (toys and references whose truth is known)",
}


@dataclass(frozen=True)
class Suite:
    """``python -m <module> <args> --json PATH`` writes the suite's rows to PATH.

    ``kind``: ``SPEED`` (time or memory against a baseline) or ``KNOWN_ANSWER`` (accuracy or
    behaviour against a truth known exactly: a quadrature, a Markov chain, a measurement)."""

    name: str
    module: str
    kind: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    limit_s: int = 900


SUITES = (
    Suite("losses", "benchmarks.bench_losses", SPEED, limit_s=600),
    Suite("fused", "benchmarks.bench_fused", SPEED, (), ("--repeats", "1"), 900),
    Suite("loss_step", "benchmarks.bench_loss_step", SPEED, (),
          ("--presets", "tiny", "--repeats", "3"), 900),
    Suite("samplers", "benchmarks.bench_samplers", SPEED, (),
          ("--batch", "2", "--length", "256", "--skip-bias"), 900),
    Suite("dit", "benchmarks.bench_dit", SPEED, ("--repeats", "7"), ("--repeats", "3"), 600),
    Suite("dcd_step", "benchmarks.bench_dcd_step", SPEED, (), ("--quick",), 600),
    Suite("sampling_run", "benchmarks.bench_sampling_run", SPEED, (), ("--quick",), 900),
    Suite("blocks", "benchmarks.bench_blocks", SPEED, (), ("--quick",), 900),
    Suite("duality", "benchmarks.bench_duality", KNOWN_ANSWER, limit_s=600),
    Suite("curriculum", "benchmarks.bench_curriculum", KNOWN_ANSWER, ("--draws", "32"),
          ("--draws", "8", "--taus", "1e-3", "1"), 600),
    Suite("distill", "benchmarks.bench_distill", KNOWN_ANSWER, (), ("--quick",), 900),
    Suite("sdtt", "benchmarks.bench_sdtt", KNOWN_ANSWER, (), ("--quick",), 900),
    Suite("policies", "benchmarks.bench_policies", KNOWN_ANSWER, (), ("--quick",), 1800),
)  # fmt: skip

# pytest-benchmark pairs measured in the same pytest process: (suite, ours, baseline, target).
PAIRS = (
    ("losses", "test_uniform_nelbo_lean", "test_uniform_nelbo_naive", 0.5),
    ("fused", "test_fused_head", "test_materialised_head", 1.2),
    ("samplers", "test_ancestral_step", "test_baseline_step", 0.25),
    ("samplers", "test_ancestral_step_seed", "test_ancestral_step", 1.1),
    ("dcd_step", "test_dcd_step_ours", "test_dcd_step_baseline", 0.5),
    ("sampling_run", "test_sampling_run_ours", "test_sampling_run_baseline", 0.5),
)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _stream(cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[str, int | None]:
    """Run ``cmd`` in the repository root, echoing its output; returns (output, exit code or
    None on timeout)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            lines.append(f"[timed out after {timeout_s:.0f} s]\n")
            print(lines[-1], end="", flush=True)
            return "".join(lines), None
        if sel.select(timeout=min(left, 5.0)):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            print(line, end="", flush=True)
        elif proc.poll() is not None:
            rest = proc.stdout.read()
            if rest:
                lines.append(rest)
                print(rest, end="", flush=True)
            break
    return "".join(lines), proc.wait()


def run_pytest_benchmarks(json_path: Path, quick: bool, threads: int,
                          timeout_s: float) -> tuple[list[Row], dict[str, Any]]:  # fmt: skip
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("bench_*.py"))
    junit = json_path.with_suffix(".junit.xml")  # the pass / fail counts, read as data
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-enable",
           f"--benchmark-json={json_path}", f"--junitxml={junit}", "--benchmark-sort=name",
           "--benchmark-columns=min,median,mean,rounds", "-p", "no:cacheprovider"]  # fmt: skip
    if quick:
        cmd += ["--benchmark-max-time=0.2", "--benchmark-min-rounds=2"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    _, code = _stream(cmd, timeout_s, _env(threads))
    info = {"exit_code": code, "json": str(json_path)}
    if not json_path.is_file():
        return _missing("pytest-benchmark", f"no JSON written (exit code {code})"), info
    data = json.loads(json_path.read_text())
    median = {b["name"]: b["stats"]["median"] for b in data.get("benchmarks", [])}
    info["benchmarks"] = median
    info["failed"] = _junit_failures(junit)
    rows = []
    for suite, ours, base, target in PAIRS:
        if ours in median and base in median:
            ratio = median[ours] / median[base]
            rows.append(Row(suite, f"{ours} vs {base} (median)", "s", median[ours], median[base],
                            ratio, f"<= {target:g}", ratio <= target,
                            "pytest-benchmark"))  # fmt: skip
    if "test_build_new_vocabulary" in median:
        build = median["test_build_new_vocabulary"]
        rows.append(Row("duality", "test_build_new_vocabulary: table for K = 50257 (median)", "s",
                        build, 4 * 3600.0, target="<= 1 s", met=build <= 1.0,
                        source="pytest-benchmark; baseline: reference figure"))  # fmt: skip
    return rows, info


def _junit_failures(path: Path) -> int | None:
    """Failed plus errored tests of a pytest junit XML file (None when it is missing)."""
    if not path.is_file():
        return None
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return sum(int(x.get("failures", 0)) + int(x.get("errors", 0)) for x in suites)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3f}"
    return str(v)


def summary_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    headers = ("suite", "metric", "unit", "ours", "baseline", "ratio", "target", "met", "source")
    cells = [headers] + [
        (r.suite, r.metric, r.unit, _fmt(r.ours), _fmt(r.baseline), _fmt(r.ratio), r.target,
         "-" if r.met is None else _fmt(r.met), r.source)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def grouped_tables(rows: list[Row]) -> str:
    """``summary_table`` of the speed comparisons, then of the known-answer experiments."""
    kind = {s.name: s.kind for s in SUITES}
    parts = []
    for key, title in KINDS.items():
        group = [r for r in rows if kind.get(r.suite, SPEED) == key]
        if group:
            parts.append(f"{title}:\n{summary_table(group)}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--only", default=None, help="comma-separated suites, e.g. losses,dcd_step")
    p.add_argument("--skip-pytest", action="store_true", help="skip the pytest-benchmark part")
    p.add_argument("--skip-mains", action="store_true", help="skip the side-by-side scripts")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every subprocess")
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="stop starting new parts after this much time")  # fmt: skip
    p.add_argument("--out", default=".benchmarks", help="where the JSON files go")
    args = p.parse_args(argv)
    start = time.perf_counter()
    budget = args.max_minutes * 60
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.threads)
    machine_line = (f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
                    f"{machine['threads']} thread(s) per benchmark, Python {machine['python']}, "
                    f"load average {machine['load_average_1min']}")  # fmt: skip
    print(f"machine: {machine_line}", flush=True)
    only = set(args.only.split(",")) if args.only else None
    suites = [s for s in SUITES if only is None or s.name in only]
    if only is not None and (unknown := only - {s.name for s in SUITES}):
        p.error(f"unknown suites {sorted(unknown)}; choose from {[s.name for s in SUITES]}")

    rows: list[Row] = []
    record: dict[str, Any] = {"machine": machine, "quick": args.quick, "suites": {}}
    if not args.skip_pytest:
        print("\n=== pytest-benchmark ===", flush=True)
        json_path = out_dir / f"{stamp}.json"
        pytest_rows, info = run_pytest_benchmarks(json_path, args.quick, args.threads,
                                                  max(60.0, budget / 3))  # fmt: skip
        record["pytest_benchmark"] = info
        rows += [r for r in pytest_rows if only is None or r.suite in only]
    if not args.skip_mains:
        env = _env(args.threads)
        for suite in suites:
            left = budget - (time.perf_counter() - start)
            if left < 30:
                rows += _missing(suite.name, "skipped: out of --max-minutes")
                continue
            rows_path = out_dir / f"{stamp}-{suite.name}.json"
            suite_args = suite.quick_args if args.quick else suite.args
            cmd = [sys.executable, "-m", suite.module, *suite_args, "--json", str(rows_path)]
            print(f"\n=== {suite.name} ({suite.kind}): {' '.join(cmd[1:])} ===", flush=True)
            t0 = time.perf_counter()
            out, code = _stream(cmd, min(suite.limit_s, left), env)
            seconds = time.perf_counter() - t0
            record["suites"][suite.name] = {"command": cmd[1:], "exit_code": code,
                                            "seconds": seconds, "output": out,
                                            "rows_json": str(rows_path)}  # fmt: skip
            if code is None:
                rows += _missing(suite.name, f"timed out after {seconds:.0f} s")
            elif code != 0:
                rows += _missing(suite.name, f"exit code {code}")
            else:
                rows += read_rows(suite.name, rows_path)
    wall = time.perf_counter() - start
    order = {s.name: i for i, s in enumerate(SUITES)}
    rows.sort(key=lambda r: order.get(r.suite, len(order)))
    table = grouped_tables(rows)
    print(f"\n=== summary ({'quick' if args.quick else 'full'} sizes; {wall / 60:.1f} min) ===")
    print(f"machine: {machine_line}")
    print("ratio = ours / baseline (lower is better); baselines run in the same process unless "
          "marked 'reference figure'")  # fmt: skip
    print(table)
    met = [r.met for r in rows if r.met is not None]
    print(f"targets met: {sum(met)} of {len(met)}")
    record.update({"wall_s": wall, "rows": [r.__dict__ for r in rows], "table": table})
    summary_path = out_dir / f"{stamp}-summary.json"
    summary_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"saved: {summary_path}" + ("" if args.skip_pytest else f", {out_dir / stamp}.json"))
    return record


if __name__ == "__main__":
    main()
