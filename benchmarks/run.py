"""``make bench``: every benchmark suite beside its baseline, then one summary table.

    python -m benchmarks.run                 # everything (about 10-20 min on 2 CPU cores)
    python -m benchmarks.run --quick         # smaller sizes (a few minutes)
    python -m benchmarks.run --only losses,dcd_step --skip-pytest

Three parts, all in subprocesses with one torch thread each (the timings are per core):

1. pytest-benchmark over the ``test_*`` functions of every ``benchmarks/bench_*.py``, saved to
   ``.benchmarks/<timestamp>.json``;
2. each suite's side-by-side script (``python -m benchmarks.bench_<suite>``), its output shown
   as it runs;
3. one summary table (suite, metric, ours, baseline, ratio, target, met) built from what the
   suites printed and from the pytest-benchmark pairs (ours vs baseline in the same process), so
   every number in it was printed above. Saved as ``.benchmarks/<timestamp>-summary.json`` with
   the machine (CPU model, cores, torch version, threads) and each suite's output.

Baselines are measured in the same process as ours, except where a suite compares with a
published figure of the reference implementation (marked "reference figure"). A suite whose
output format changed shows "n/a" in the table instead of failing the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SUITES", "Row", "Suite", "machine_info", "main", "summary_table"]

ROOT = Path(__file__).resolve().parent.parent


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo, else ``platform``), cores, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "load_average_1min": round(load, 2),
    }


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


_NUM = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def parse_duality(out: str) -> list[Row]:
    rows = re.findall(rf"^\s*(\d+) \|\s*{_NUM} \|\s*{_NUM} \|\s*{_NUM} \|\s*(\w+) \|\s*{_NUM}\s*$",
                      out, re.M)  # fmt: skip
    if not rows:
        return _missing("duality", "no table in the output")
    value = max(float(r[1]) for r in rows)
    slope = max(float(r[2]) for r in rows)
    build = max(float(r[3]) for r in rows)
    monotone = all(r[4] == "yes" for r in rows)
    ks = ", ".join(r[0] for r in rows)
    ref = "main; baseline: reference figure (Concepts §2)"
    return [
        Row("duality", f"max |T - T_quad|, worst of K = {ks}", "", value, 1.7e-5,
            target="<= 1e-09", met=value <= 1e-9, source=ref),
        Row("duality", "max |dT - dT_quad| / max dT, worst K", "", slope, 0.04,
            target="<= 1e-08", met=slope <= 1e-8 and monotone, source=ref),
        Row("duality", "table build for a new K, worst K", "ms", build, 4 * 3600e3,
            target="<= 1000 ms", met=build <= 1000, source=ref),
    ]  # fmt: skip


def parse_losses(out: str) -> list[Row]:
    rows = []
    wanted = (("peak extra memory (MiB)", "uniform NELBO peak extra memory", "MiB"),
              ("time fwd+bwd (s)", "uniform NELBO forward+backward", "s"))  # fmt: skip
    for label, what, unit in wanted:
        m = re.search(rf"^{re.escape(label)}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+<= {_NUM}", out, re.M)
        if m is None:
            rows += _missing("losses", f"{label!r} not in the output")
            continue
        ours, naive, ratio, target = (float(x) for x in m.groups())
        shape = re.search(r"B=(\d+) L=(\d+) K=(\d+)", out)
        size = f", B={shape[1]} L={shape[2]} K={shape[3]}" if shape else ""
        rows.append(Row("losses", what + size + " (lean vs naive)", unit, ours, naive, ratio,
                        f"<= {target:g}", ratio <= target))  # fmt: skip
    return rows


def parse_samplers(out: str) -> list[Row]:
    rows = []
    shape = re.search(r"B=(\d+) L=(\d+) K=(\d+)", out)
    size = f", B={shape[1]} L={shape[2]}" if shape else ""
    pattern = rf"^(\w+ \(\w+\))\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}"
    for name, ours, plain, _, lean, _ in re.findall(pattern, out, re.M):
        ours_s, lean_s, plain_s = float(ours), float(lean), float(plain)
        ratio = max(ours_s / plain_s, ours_s / lean_s)
        if name.startswith("nucleus"):
            rows.append(Row("samplers", f"step overhead, {name}{size} (baseline: no filtering)",
                            "s", ours_s, lean_s, ratio, "n/a", None))  # fmt: skip
            continue
        rows.append(Row("samplers", f"step overhead, {name}{size} (vs the faster f64 baseline)",
                        "s", ours_s, min(lean_s, plain_s), ratio, "<= 0.25",
                        ratio <= 0.25))  # fmt: skip
    for kind, gen_s, seed_s, ratio in re.findall(
        rf"^(\w+) step, seed=\s+{_NUM}\s+{_NUM}\s+{_NUM}", out, re.M
    ):
        rows.append(Row("samplers", f"{kind} step, seed= vs generator={size}", "s",
                        float(seed_s), float(gen_s), float(ratio), "<= 1.1",
                        float(ratio) <= 1.1))  # fmt: skip
    mem = re.search(rf"^\s+ancestral\s+\+\s*{_NUM} MiB = \+{_NUM} tensors; with the logits {_NUM}",
                    out, re.M)  # fmt: skip
    base = re.search(rf"^\s+baseline\s+\+\s*{_NUM} MiB = \+{_NUM} tensors;.*needs ~\+{_NUM}",
                     out, re.M)  # fmt: skip
    if mem:
        total = float(mem[3])
        rows.append(Row("samplers", "ancestral step peak memory, in (B, L, K) float32 tensors",
                        "tensors", total, 1 + float(base[3]) if base else None,
                        target="<= 2", met=total <= 2))  # fmt: skip
    bias = {n: float(z) for n, z in re.findall(r"^\s+(ours|gumbel32)\s+\d+\s+\(([-+\d.]+) sd\)",
                                               out, re.M)}  # fmt: skip
    if "ours" in bias:
        rows.append(Row("samplers", "tail-draw frequency, |deviation| from exact (float32 "
                        "Gumbel-max as baseline)", "sd", abs(bias["ours"]),
                        abs(bias.get("gumbel32", float("nan"))), target="<= 3 sd",
                        met=abs(bias["ours"]) <= 3))  # fmt: skip
    return rows or _missing("samplers", "no table in the output")


def parse_dit(out: str) -> list[Row]:
    rows = []
    pattern = (rf"tiny (fwd\+bwd[^\n]*?)\s+B=(\d+) L=(\d+) K=(\d+): wall median {_NUM} s.*?"
               rf"CPU median {_NUM} s; reference {_NUM} s / ours = {_NUM}x wall, {_NUM}x CPU "
               rf"\(target {_NUM}x\)")  # fmt: skip
    for what, b, n, k, wall, cpu, ref, _, _, target in re.findall(pattern, out):
        ratio = float(wall) / float(ref)
        goal = 1 / float(target)
        rows.append(Row("dit", f"DiT tiny {what.strip()}, B={b} L={n} K={k} (CPU median "
                        f"{float(cpu):.3f} s)", "s", float(wall), float(ref), ratio,
                        f"<= {goal:.3f} (1.5x faster)", ratio <= goal,
                        "main; baseline: reference figure"))  # fmt: skip
    return rows or _missing("dit", "no timing line in the output")


def parse_curriculum(out: str) -> list[Row]:
    rows = []
    for tau, relaxed, discrete, _ in re.findall(
        rf"^\s*{_NUM} \|\s*{_NUM} \|\s*{_NUM} \|\s*{_NUM}", out, re.M
    ):
        rows.append(Row("curriculum", f"gradient variance, relaxed (ours) vs discrete input, "
                        f"tau = {float(tau):g}", "", float(relaxed), float(discrete),
                        target="- (measurement)", met=None))  # fmt: skip
    return rows or _missing("curriculum", "no table in the output")


def parse_distill(out: str) -> list[Row]:
    table: dict[tuple[str, str, int, str], float] = {}
    pattern = (rf"^(.{{13}}) (\S+)\s+(\d+)\s+\d+ (\S+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}"
               rf"\s+{_NUM}\s*$")
    for name, grid, steps, tail, _, gap, _, _, _ in re.findall(pattern, out, re.M):
        table[(name.strip(), grid, int(steps), tail)] = float(gap)
    rows = []
    for steps in (2, 4, 8):
        key = ("loglin", steps, "greedy")
        student, teacher = table.get(("DCD KL(s||t)", *key)), table.get(("teacher", *key))
        if student is None or teacher is None:
            continue
        rows.append(Row("distill", f"|NLL - H| at {steps} steps (NFE {steps + 1}), greedy: DCD "
                        "vs its teacher (Markov chain)", "nats", student, teacher,
                        target="< 1 (student closer)", met=student < teacher))  # fmt: skip
    return rows or _missing("distill", "no table in the output")


def parse_sdtt(out: str) -> list[Row]:
    table: dict[tuple[str, int], float] = {}
    pattern = rf"^(.{{21}}) \s*(\d+)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$"
    for name, steps, _, gap, _, _, _ in re.findall(pattern, out, re.M):
        table[(name.strip(), int(steps))] = float(gap)
    rows = []
    for steps in (2, 4, 8):
        student, teacher = table.get(("SDTT(mdlm) KL(s||t)", steps)), table.get(("mdlm", steps))
        if student is None or teacher is None:
            continue
        rows.append(Row("sdtt", f"|NLL - H| at {steps} steps, masked sampler: SDTT student vs "
                        "its MDLM teacher (Markov chain)", "nats", student, teacher,
                        target="< 1 (student closer)", met=student < teacher))  # fmt: skip
    return rows or _missing("sdtt", "no table in the output")


def parse_json_rows(suite: str) -> Callable[[str], list[Row]]:
    def parse(out: str) -> list[Row]:
        m = re.search(r"^summary-json: (.*)$", out, re.M)
        if m is None:
            return _missing(suite, "no summary-json line")
        rows = []
        for r in json.loads(m[1]):
            target = r.get("target")
            rows.append(Row(suite, r["metric"], r.get("unit", ""), r["ours"], r["baseline"],
                            r["ratio"], "-" if target is None else f"<= {target:g}",
                            r.get("met")))  # fmt: skip
        return rows

    return parse


# --- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    name: str
    module: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    parse: Callable[[str], list[Row]] = field(default=lambda out: [])
    limit_s: int = 900


SUITES = (
    Suite("duality", "benchmarks.bench_duality", parse=parse_duality, limit_s=600),
    Suite("losses", "benchmarks.bench_losses", parse=parse_losses, limit_s=600),
    Suite("fused", "benchmarks.bench_fused", ("--json",), ("--json", "--repeats", "1"),
          parse_json_rows("fused"), 900),
    Suite("loss_step", "benchmarks.bench_loss_step", ("--json",),
          ("--json", "--presets", "tiny", "--repeats", "3"), parse_json_rows("loss_step"), 900),
    Suite("samplers", "benchmarks.bench_samplers", (),
          ("--batch", "2", "--length", "256", "--skip-bias"), parse_samplers, 900),
    Suite("dit", "benchmarks.bench_dit", ("--repeats", "7"), ("--repeats", "3"), parse_dit, 600),
    Suite("dcd_step", "benchmarks.bench_dcd_step", ("--json",), ("--quick", "--json"),
          parse_json_rows("dcd_step"), 600),
    Suite("sampling_run", "benchmarks.bench_sampling_run", ("--json",), ("--quick", "--json"),
          parse_json_rows("sampling_run"), 900),
    Suite("curriculum", "benchmarks.bench_curriculum", ("--draws", "32"),
          ("--draws", "8", "--taus", "1e-3", "1"), parse_curriculum, 600),
    Suite("distill", "benchmarks.bench_distill", (), ("--quick",), parse_distill, 900),
    Suite("sdtt", "benchmarks.bench_sdtt", (), ("--quick",), parse_sdtt, 900),
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
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-enable",
           f"--benchmark-json={json_path}", "--benchmark-sort=name",
           "--benchmark-columns=min,median,mean,rounds", "-p", "no:cacheprovider"]  # fmt: skip
    if quick:
        cmd += ["--benchmark-max-time=0.2", "--benchmark-min-rounds=2"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    out, code = _stream(cmd, timeout_s, _env(threads))
    info = {"exit_code": code, "json": str(json_path)}
    if not json_path.is_file():
        return _missing("pytest-benchmark", f"no JSON written (exit code {code})"), info
    data = json.loads(json_path.read_text())
    median = {b["name"]: b["stats"]["median"] for b in data.get("benchmarks", [])}
    info["benchmarks"] = median
    failed = re.search(r"(\d+) failed", out)
    info["failed"] = int(failed[1]) if failed else 0
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
            cmd = [sys.executable, "-m", suite.module,
                   *(suite.quick_args if args.quick else suite.args)]  # fmt: skip
            print(f"\n=== {suite.name}: {' '.join(cmd[1:])} ===", flush=True)
            t0 = time.perf_counter()
            out, code = _stream(cmd, min(suite.limit_s, left), env)
            seconds = time.perf_counter() - t0
            record["suites"][suite.name] = {"command": cmd[1:], "exit_code": code,
                                            "seconds": seconds, "output": out}  # fmt: skip
            if code is None:
                rows += _missing(suite.name, f"timed out after {seconds:.0f} s")
            elif code != 0:
                rows += _missing(suite.name, f"exit code {code}")
            else:
                try:
                    rows += suite.parse(out)
                except Exception as err:  # a changed format must not sink the summary
                    rows += _missing(suite.name, f"unparsed output: {type(err).__name__}")
    wall = time.perf_counter() - start
    order = {s.name: i for i, s in enumerate(SUITES)}
    rows.sort(key=lambda r: order.get(r.suite, len(order)))
    table = summary_table(rows)
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
