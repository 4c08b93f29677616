"""Sampler overhead per step, peak memory and exactness at K = 50257 (issue 4, item 4).

    python -m benchmarks.bench_samplers                      # the side-by-side table (B=8, L=1024)
    python -m benchmarks.bench_samplers --batch 2 --length 256 --skip-bias   # a quicker look
    python -m benchmarks.bench_samplers --rowwise-only      # only seed= beside generator=
    python -m benchmarks.bench_samplers --json rows.json     # and the summary rows as JSON
    pytest benchmarks/bench_samplers.py --benchmark-enable   # small timings via pytest-benchmark

"Overhead per step" is everything a reverse step does except the denoiser call: it starts from
the logits (B, L, K) and ends with z_s. The baseline is the straightforward float64 step: x_hat
= softmax(logits) in float64, the (B, L, K) posterior of Concepts §5 in float64 (with one-hot
vectors, as written in the formula), then an exponential race (argmax of posterior / Exp(1)
noise, the Gumbel-max trick) in float64; "lean f64" is the same law written for speed (in-place,
one scatter). Both are run one sequence at a time (B = 1 slices, timings summed): a full-batch
float64 step needs several float64 (B, L, K) tensors (~20 GiB at B=8, L=1024), and slicing only
helps them. The ratio is checked against both.

Targets: ours <= 0.25 x the baseline's time per step, peak memory <= 2 float32 (B, L, K) tensors
(the logits themselves count as one). Peak memory is the growth of the peak RSS of a fresh
subprocess over its RSS with the logits already allocated.

Row-wise randomness: the same steps drawing from a ``RowStream`` (what ``seed=`` builds: numbers
keyed by (seed, row), so a row's sample does not depend on the batch) beside a
``torch.Generator``, interleaved, best of ``--repeats`` each, in CPU time of the process (one
thread; the wall clock of a shared machine moves by more than the difference), and the
randomness of a step timed alone. Target: seed= <= 1.1 x generator=.

The bias check draws from a peaked law at K = 50257 (top class 0.9975, the other 50256 classes
5e-8 each) and compares the frequency of the tail with its exact binomial law: our draw against a
float32 Gumbel-max (argmax(logits - log(-log u)), u float32), which loses most of the tail.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.samplers import (
    RowStream,
    masked_ancestral_step,
    sample_categorical_logits,
    uniform_ancestral_step,
)
from discdiff.samplers.categorical import randint, uniforms

K_GPT2 = 50257


def baseline_step(
    logits: torch.Tensor,
    z_t: torch.Tensor,
    alpha_s: float,
    alpha_t: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The straightforward float64 step: full (B, L, K) posterior, argmax(q / E), E ~ Exp(1)."""
    k = logits.shape[-1]
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    alpha_ts = alpha_t / alpha_s
    onehot = torch.nn.functional.one_hot(z_t, k).to(torch.float64)
    x_zt = probs.gather(-1, z_t.unsqueeze(-1))
    numerator = (
        k * alpha_t * probs * onehot
        + (alpha_ts - alpha_t) * onehot
        + (alpha_s - alpha_t) * probs
        + (1 - alpha_ts) * (1 - alpha_s) / k
    )
    posterior = numerator / (k * alpha_t * x_zt + 1 - alpha_t)
    noise = torch.empty_like(posterior).exponential_(generator=generator)
    return (posterior / noise).argmax(-1)


def baseline_step_lean(
    logits: torch.Tensor,
    z_t: torch.Tensor,
    alpha_s: float,
    alpha_t: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The same float64 step written for speed: no one-hot, in-place updates, one scatter."""
    k = logits.shape[-1]
    posterior = torch.softmax(logits.to(torch.float64), dim=-1)
    index = z_t.unsqueeze(-1)
    x_zt = posterior.gather(-1, index)
    alpha_ts = alpha_t / alpha_s
    posterior.mul_(alpha_s - alpha_t).add_((1 - alpha_ts) * (1 - alpha_s) / k)
    posterior.scatter_add_(-1, index, k * alpha_t * x_zt + alpha_ts - alpha_t)
    posterior.div_(k * alpha_t * x_zt + 1 - alpha_t)
    noise = torch.empty_like(posterior).exponential_(generator=generator)
    return posterior.div_(noise).argmax(-1)


def by_sequence(step, logits, z_t, alpha_s, alpha_t, generator=None):
    """Run a float64 baseline one sequence at a time (B = 1 slices) to bound its memory."""
    return torch.cat(
        [
            step(logits[i : i + 1], z_t[i : i + 1], alpha_s, alpha_t, generator)
            for i in range(logits.shape[0])
        ]
    )


def make_inputs(batch: int, length: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g).mul_(3.0)
    z_t = torch.randint(0, vocab, (batch, length), generator=g)
    return logits, z_t


# A mid step of an 8-step log-linear schedule (t = 0.5 -> s = 0.375), and the worst case for us:
# a single step from pure noise to data, where every token draws from x_hat.
STEPS = {
    "mid": (1 - 0.999 * 0.375, 1 - 0.999 * 0.5),
    "all_draw": (1.0, 1e-3),
}


def ours(kind: str, logits, z_t, alpha_s, alpha_t, generator):
    if kind == "ancestral":
        return uniform_ancestral_step(logits, z_t, alpha_s, alpha_t, generator=generator)
    if kind == "psi":
        return uniform_ancestral_step(logits, z_t, alpha_s, alpha_t, kappa=0.9, generator=generator)
    if kind == "nucleus":
        return uniform_ancestral_step(logits, z_t, alpha_s, alpha_t, top_p=0.9, generator=generator)
    if kind == "masked":
        z = z_t.clone()
        z[:, ::2] = logits.shape[-1] - 1  # half the tokens masked
        return masked_ancestral_step(
            logits, z, alpha_s, alpha_t, mask_id=logits.shape[-1] - 1, generator=generator
        )
    raise ValueError(kind)


def timed(fn, repeats: int, clock=time.perf_counter) -> float:
    best = math.inf
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure_memory(which: str, batch: int, length: int, vocab: int) -> dict[str, float]:
    """Run in a fresh process: peak RSS growth of one step over the RSS with logits allocated.

    Uses VmHWM after resetting it (/proc/self/clear_refs): ru_maxrss would report the parent's
    RSS at fork time."""
    torch.set_num_threads(1)
    logits, z_t = make_inputs(batch, length, vocab)
    alpha_s, alpha_t = STEPS["mid"]
    g = torch.Generator().manual_seed(1)
    # warm up the allocator and libraries on a tiny problem first
    small_l, small_z = make_inputs(1, 4, vocab)
    ours("ancestral", small_l, small_z, alpha_s, alpha_t, g)
    ours("nucleus", small_l, small_z, alpha_s, alpha_t, g)
    baseline_step(small_l, small_z, alpha_s, alpha_t, g)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter to the current RSS
    before = _status_bytes("VmRSS")
    if which == "baseline":
        by_sequence(baseline_step, logits, z_t, alpha_s, alpha_t, g)
    else:
        ours(which, logits, z_t, alpha_s, alpha_t, g)
    return {"delta": _status_bytes("VmHWM") - before, "logits": logits.numel() * 4}


def memory_in_subprocess(which: str, batch: int, length: int, vocab: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_samplers",
        "--memory-child",
        which,
        "--batch",
        str(batch),
        "--length",
        str(length),
        "--vocab",
        str(vocab),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rowwise_rows(
    logits: torch.Tensor, z_t: torch.Tensor, repeats: int
) -> list[tuple[str, float, float]]:
    """(kind, generator= seconds, seed= seconds) per step at the mid step: the same step drawing
    from a torch.Generator and from a RowStream, interleaved, in CPU seconds of this process
    (one torch thread): a wall clock on a shared machine moves by more than the difference."""
    alpha_s, alpha_t = STEPS["mid"]
    rows = []
    for kind in ("ancestral", "psi", "masked"):
        stream = RowStream(0, z_t.shape[1])
        sources = {"generator": torch.Generator().manual_seed(0), "seed": stream}
        best = dict.fromkeys(sources, math.inf)
        for r in range(repeats):  # alternate which goes first
            for name, source in list(sources.items())[:: 1 if r % 2 == 0 else -1]:
                run = lambda kd=kind, s=source: ours(kd, logits, z_t, alpha_s, alpha_t, s)  # noqa: E731
                best[name] = min(best[name], timed(run, 1, time.process_time))
        rows.append((kind, best["generator"], best["seed"]))
    return rows


def draw_cost(n: int, repeats: int = 50) -> dict[str, float]:
    """Seconds for the randomness of one uniform step alone (three float64 uniforms and one
    randint per token, n tokens) from a generator and from a RowStream: the part of the step
    that seed= changes, measured apart from the step's noisy total."""
    device = torch.device("cpu")
    sources = {"generator": torch.Generator().manual_seed(0), "seed": RowStream(0, 1)}
    best = dict.fromkeys(sources, math.inf)
    for _ in range(repeats):
        for name, src in sources.items():
            draw = lambda s=src: ([uniforms(n, s, device) for _ in range(3)],  # noqa: E731
                                  randint(K_GPT2, n, s, device))  # fmt: skip
            best[name] = min(best[name], timed(draw, 1, time.process_time))
    return best


def print_rowwise(rows: list[tuple[str, float, float]], n: int) -> None:
    print("row-wise randomness, CPU seconds per step (mid), all but the denoiser: a")
    print("torch.Generator beside seed= (a RowStream keyed by (seed, row))")
    print(f"{'step':<24}{'generator=':>11}{'seed=':>9}{'ratio':>7}  target ratio <= 1.1")
    for kind, gen_s, seed_s in rows:
        ratio = seed_s / gen_s
        flag = "ok" if ratio <= 1.1 else "MISSED"
        print(f"{kind + ' step, seed=':<24}{gen_s:>11.3f}{seed_s:>9.3f}{ratio:>7.3f}  {flag}")
    cost = draw_cost(n)
    extra = cost["seed"] - cost["generator"]
    print(f"the randomness of one step alone ({n} tokens, 3 uniforms + 1 randint each): "
          f"generator= {cost['generator'] * 1e3:.3f} ms, seed= {cost['seed'] * 1e3:.3f} ms; "
          f"the ancestral step + that difference: ratio {1 + extra / rows[0][1]:.5f}")


def bias_check(n_draws: int, vocab: int = K_GPT2, seed: int = 0) -> dict[str, float]:
    """Tail frequency of a peaked law: exact expectation, ours, float32 Gumbel-max."""
    tail_each = 5e-8
    logits = torch.full((vocab,), math.log(tail_each))
    logits[0] = math.log(1 - tail_each * (vocab - 1))
    p64 = torch.softmax(logits.to(torch.float64), -1)
    tail = float(1 - p64[0])
    g = torch.Generator().manual_seed(seed)
    chunk = 1024
    ours_hits = gumbel_hits = 0
    start = time.perf_counter()
    for _ in range(n_draws // chunk):
        ours_hits += int(
            (sample_categorical_logits(logits.expand(chunk, -1), generator=g) != 0).sum()
        )
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n_draws // chunk):
        u = torch.rand(chunk, vocab, generator=g)
        gumbel_hits += int(((logits - torch.log(-torch.log(u))).argmax(-1) != 0).sum())
    gumbel_s = time.perf_counter() - start
    n = (n_draws // chunk) * chunk
    return {
        "n": n,
        "expected": n * tail,
        "sd": math.sqrt(n * tail * (1 - tail)),
        "ours": ours_hits,
        "gumbel32": gumbel_hits,
        "ours_s": ours_s,
        "gumbel32_s": gumbel_s,
    }


def time_steps(logits: torch.Tensor, z_t: torch.Tensor, g: torch.Generator,
               repeats: int) -> list[tuple[str, float, float, float]]:  # fmt: skip
    """(step, ours, plain baseline, lean baseline) seconds per step at each of ``STEPS``."""
    rows = []
    for step_name, (alpha_s, alpha_t) in STEPS.items():
        base = {
            name: timed(
                lambda f=f, a_s=alpha_s, a_t=alpha_t: by_sequence(f, logits, z_t, a_s, a_t, g), 1
            )
            for name, f in (("plain", baseline_step), ("lean", baseline_step_lean))
        }
        for kind in ("ancestral", "psi", "nucleus", "masked"):
            if step_name == "all_draw" and kind != "ancestral":
                continue
            ours_s = timed(
                lambda kd=kind, a_s=alpha_s, a_t=alpha_t: ours(kd, logits, z_t, a_s, a_t, g),
                repeats,
            )
            rows.append((f"{kind} ({step_name})", ours_s, base["plain"], base["lean"]))
    return rows


def print_steps(rows: list[tuple[str, float, float, float]]) -> None:
    """The step table: ours beside both float64 baselines."""
    print()
    print("seconds per step, all but the denoiser; baselines: float64 posterior + exponential race")
    header = f"{'step':<22}{'ours':>8}{'baseline':>10}{'ratio':>7}{'lean f64':>10}{'ratio':>7}"
    print(header + "  target ratio <= 0.25")
    for name, ours_s, plain_s, lean_s in rows:
        worst = max(ours_s / plain_s, ours_s / lean_s)
        flag = "ok" if worst <= 0.25 else "MISSED"
        if name.startswith("nucleus"):
            flag = "n/a: the baselines do no nucleus filtering (top_p=0.9, flat logits)"
        print(
            f"{name:<22}{ours_s:>8.3f}{plain_s:>10.2f}{ours_s / plain_s:>7.3f}"
            f"{lean_s:>10.2f}{ours_s / lean_s:>7.3f}  {flag}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=K_GPT2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bias-draws", type=int, default=16384)
    parser.add_argument("--skip-bias", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rowwise-only", action="store_true", help="only seed= vs generator=")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    add_json_option(parser)
    args = parser.parse_args()

    if args.memory_child is not None:
        print(json.dumps(measure_memory(args.memory_child, args.batch, args.length, args.vocab)))
        return

    torch.set_num_threads(args.threads)
    b, n, k = args.batch, args.length, args.vocab
    print(f"B={b} L={n} K={k}  threads={torch.get_num_threads()}  torch {torch.__version__}")
    logits, z_t = make_inputs(b, n, k)
    g = torch.Generator().manual_seed(0)
    if args.rowwise_only:
        print()
        print_rowwise(rowwise_rows(logits, z_t, args.repeats), b * n)
        return

    rows = time_steps(logits, z_t, g, args.repeats)
    print_steps(rows)

    print()
    rowwise = rowwise_rows(logits, z_t, args.repeats)
    print_rowwise(rowwise, b * n)
    size = f", B={b} L={n}"
    summary = step_summary(rows, size) + rowwise_summary(rowwise, size)

    extras: dict[str, float] = {}
    if not args.skip_memory:
        del logits
        print()
        print("peak memory of one step beyond the logits, in float32 (B, L, K) tensors")
        for which in ("ancestral", "nucleus", "masked", "baseline"):
            m = memory_in_subprocess(which, b, n, k)
            extra = extras[which] = m["delta"] / m["logits"]
            line = f"  {which:<10} +{m['delta'] / 2**20:9.1f} MiB = +{extra:.3f} tensors; "
            if which == "baseline":
                line += f"run as B=1 slices; a full batch needs ~+{extra * b:.1f}"
            else:
                flag = "ok" if 1 + extra <= 2 else "MISSED"
                line += f"with the logits {1 + extra:.3f} (target <= 2) {flag}"
            print(line)

    if not args.skip_bias:
        r = bias_check(args.bias_draws, k)
        print()
        print(
            f"tail frequency at K={k}, top class {1 - 5e-8 * (k - 1):.4f}, others 5e-8 each, "
            f"{r['n']} draws: expected {r['expected']:.1f} +- {r['sd']:.1f}"
        )
        for name in ("ours", "gumbel32"):
            z = (r[name] - r["expected"]) / r["sd"]
            print(f"  {name:<9} {r[name]:6d}  ({z:+.1f} sd)  {r[name + '_s']:.1f} s")
        summary.append(bias_summary(r))
    if "ancestral" in extras:
        total = 1 + extras["ancestral"]
        summary.append(row("ancestral step peak memory, in (B, L, K) float32 tensors", "tensors",
                           total, 1 + extras["baseline"] * b, target="<= 2",
                           met=total <= 2))  # fmt: skip
    write_rows(args.json, summary)


def step_summary(rows: list[tuple[str, float, float, float]], size: str) -> list[dict[str, Any]]:
    """Summary rows of the step table: ours against the faster float64 baseline (nucleus: the
    baselines do no filtering, so no verdict)."""
    out = []
    for name, ours_s, plain_s, lean_s in rows:
        ratio = max(ours_s / plain_s, ours_s / lean_s)
        if name.startswith("nucleus"):
            out.append(row(f"step overhead, {name}{size} (baseline: no filtering)", "s", ours_s,
                           lean_s, ratio=ratio, target="n/a"))  # fmt: skip
            continue
        out.append(row(f"step overhead, {name}{size} (vs the faster f64 baseline)", "s", ours_s,
                       min(lean_s, plain_s), ratio=ratio, target="<= 0.25",
                       met=ratio <= 0.25))  # fmt: skip
    return out


def rowwise_summary(rows: list[tuple[str, float, float]], size: str) -> list[dict[str, Any]]:
    """Summary rows of seed= (a RowStream) against generator= (a torch.Generator)."""
    return [row(f"{kind} step, seed= vs generator={size}", "s", seed_s, gen_s,
                target="<= 1.1", met=seed_s / gen_s <= 1.1)
            for kind, gen_s, seed_s in rows]  # fmt: skip


def bias_summary(r: dict[str, float]) -> dict[str, Any]:
    """The tail-draw frequency's |deviation| from exact, in standard deviations; float32
    Gumbel-max as the baseline."""
    ours_z, gumbel_z = ((r[name] - r["expected"]) / r["sd"] for name in ("ours", "gumbel32"))
    return row("tail-draw frequency, |deviation| from exact (float32 Gumbel-max as baseline)",
               "sd", abs(ours_z), abs(gumbel_z), target="<= 3 sd",
               met=abs(ours_z) <= 3)  # fmt: skip


# ---- pytest-benchmark (small sizes; `pytest benchmarks/bench_samplers.py --benchmark-enable`)

_B, _L = 2, 128


def test_ancestral_step(benchmark):
    logits, z_t = make_inputs(_B, _L, K_GPT2)
    g = torch.Generator().manual_seed(0)
    a_s, a_t = STEPS["mid"]
    benchmark(lambda: uniform_ancestral_step(logits, z_t, a_s, a_t, generator=g))


def test_ancestral_step_seed(benchmark):
    logits, z_t = make_inputs(_B, _L, K_GPT2)
    stream = RowStream(0, _L)
    a_s, a_t = STEPS["mid"]
    benchmark(lambda: uniform_ancestral_step(logits, z_t, a_s, a_t, generator=stream))


def test_baseline_step(benchmark):
    logits, z_t = make_inputs(_B, _L, K_GPT2)
    g = torch.Generator().manual_seed(0)
    a_s, a_t = STEPS["mid"]
    benchmark(lambda: baseline_step(logits, z_t, a_s, a_t, g))


def test_masked_step(benchmark):
    logits, z_t = make_inputs(_B, _L, K_GPT2)
    g = torch.Generator().manual_seed(0)
    a_s, a_t = STEPS["mid"]
    benchmark(lambda: ours("masked", logits, z_t, a_s, a_t, g))


def test_sample_categorical_logits(benchmark):
    logits, _ = make_inputs(_B, _L, K_GPT2)
    g = torch.Generator().manual_seed(0)
    benchmark(lambda: sample_categorical_logits(logits, generator=g))


if __name__ == "__main__":
    main()
