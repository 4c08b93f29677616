"""Memory, time and agreement of the memory-lean uniform NELBO against a naive one (issue 3).

    python -m benchmarks.bench_losses                          # the side-by-side table
    python -m benchmarks.bench_losses --json rows.json         # and its summary rows as JSON
    pytest benchmarks/bench_losses.py --benchmark-enable       # timings via pytest-benchmark

Both implementations run on the same inputs: B = 4, L = 256, K = 50257 (GPT-2), float32, forward
plus backward. The naive one is the library's reference, Concepts §3 written straight down
(``discdiff.losses.reference.uniform_nelbo_reference``): it materialises x̂, x̄ and x̄_θ as
(B, L, K) tensors and lets autograd keep what it needs. Targets: peak extra memory
<= 0.3x, time <= 0.5x, values equal to 1e-10 relative in float64 and 1e-5 in float32.

Memory is the peak resident set (``getrusage``) of a fresh subprocess per implementation, above a
baseline that already holds the logits and one (B, L, K) buffer the size of their gradient (which
any implementation must produce). Times are medians over interleaved repeats in this process,
with torch limited to one thread (the machine is shared; the ratio is what matters).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.losses import uniform_nelbo
from discdiff.losses.reference import uniform_nelbo_reference

SHAPE = (4, 256, 50257)
TARGETS = {"memory": 0.3, "time": 0.5, "rel64": 1e-10, "rel32": 1e-5}


IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "lean": uniform_nelbo,
    "naive": uniform_nelbo_reference,
}


def make_inputs(
    shape: tuple[int, int, int] = SHAPE, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Logits ~ 2 N(0, 1), z_t = x_0 on about half the tokens, alpha_t ~ U[0.05, 0.95]."""
    b, length, k = shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype).mul_(2.0)
    x_0 = torch.randint(0, k, (b, length), generator=g)
    noise = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, x_0, noise)
    alpha = (0.05 + 0.9 * torch.rand(b, 1, generator=g)).to(dtype)
    dalpha = torch.full((b, 1), -0.999, dtype=dtype)
    return logits, x_0, z_t, alpha, dalpha


def forward_backward(name: str, inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    logits, *rest = inputs
    leaf = logits.detach().requires_grad_()
    loss = IMPLEMENTATIONS[name](leaf, *rest)
    loss.sum().backward()
    return loss.detach(), leaf.grad


def _peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _memory_probe(name: str) -> int:
    """In a fresh process: peak RSS above logits + one gradient-sized buffer, for one call."""
    torch.set_num_threads(1)
    inputs = make_inputs()
    forward_backward(name, make_inputs((1, 2, 64)))  # load kernels, allocator arenas
    logits = inputs[0].requires_grad_()
    grad_sized = torch.ones_like(logits)  # touched: resident
    baseline = _peak_rss_bytes()
    del grad_sized
    gc.collect()
    loss = IMPLEMENTATIONS[name](logits, *inputs[1:])
    loss.sum().backward()
    return max(0, _peak_rss_bytes() - baseline)


def peak_extra_memory(name: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_losses", "--memory-probe", name],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def median_times(inputs: tuple[Tensor, ...], repeats: int = 5) -> dict[str, float]:
    """Median forward+backward seconds per implementation, runs interleaved."""
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for name in IMPLEMENTATIONS:  # warm up
        forward_backward(name, inputs)
    for _ in range(repeats):
        for name in IMPLEMENTATIONS:
            gc.collect()
            start = time.perf_counter()
            forward_backward(name, inputs)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def _max_rel(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float(((a64 - b64).abs() / b64.abs().clamp_min(1e-300)).max())


def agreement(shape64: tuple[int, int, int] = (2, 64, 50257)) -> dict[str, float]:
    """Max relative differences: lean vs naive in float64; float32 results vs float64 lean."""
    in64 = make_inputs(shape64, torch.float64, seed=1)
    lean64, glean64 = forward_backward("lean", in64)
    naive64, gnaive64 = forward_backward("naive", in64)
    in32 = tuple(t.float() if t.is_floating_point() else t for t in in64)
    lean32, glean32 = forward_backward("lean", in32)
    naive32, _ = forward_backward("naive", in32)
    # Reference for float32: the float64 loss of the very same (float32-representable) inputs.
    ref, gref = forward_backward(
        "lean", tuple(t.double() if t.is_floating_point() else t for t in in32)
    )
    gscale = gref.abs().max()
    return {
        "rel64": _max_rel(lean64, naive64),
        "grad64": float((glean64 - gnaive64).abs().max() / gnaive64.abs().max()),
        "rel32": _max_rel(lean32, ref),
        "rel32_naive": _max_rel(naive32, ref),
        "grad32": float((glean32.double() - gref).abs().max() / gscale),
    }


def main(json_path: str | None = None) -> None:
    torch.set_num_threads(1)
    b, length, k = SHAPE
    print(f"uniform_nelbo, B={b} L={length} K={k}, float32, forward+backward, 1 thread")
    mem = {name: peak_extra_memory(name) for name in IMPLEMENTATIONS}
    times = median_times(make_inputs())
    agree = agreement()
    mib = 2**20
    rows = [
        ("peak extra memory (MiB)", mem["lean"] / mib, mem["naive"] / mib, "memory"),
        ("time fwd+bwd (s)", times["lean"], times["naive"], "time"),
    ]
    print(f"{'':26}{'lean':>12}{'naive':>12}{'ratio':>10}{'target':>10}")
    for label, lean, naive, key in rows:
        ratio = lean / naive
        verdict = "ok" if ratio <= TARGETS[key] else "MISSED"
        target = f"<= {TARGETS[key]}"
        print(f"{label:26}{lean:12.3f}{naive:12.3f}{ratio:10.3f}{target:>10} {verdict}")
    logits_mib = b * length * k * 4 / mib
    print(f"(logits: {logits_mib:.0f} MiB; a gradient-sized buffer is in the baseline)")
    print("agreement, max relative difference:")
    print(f"  float64 lean vs naive, loss      {agree['rel64']:.2e}  (target <= 1e-10)")
    print(f"  float64 lean vs naive, gradient  {agree['grad64']:.2e}  (relative to max |grad|)")
    print(f"  float32 lean vs float64, loss    {agree['rel32']:.2e}  (target <= 1e-5)")
    print(f"  float32 naive vs float64, loss   {agree['rel32_naive']:.2e}  (for comparison)")
    print(f"  float32 lean vs float64, grad    {agree['grad32']:.2e}  (relative to max |grad|)")
    write_rows(json_path, summary_rows(mem["lean"] / mib, mem["naive"] / mib, times["lean"],
                                       times["naive"], SHAPE))  # fmt: skip


def summary_rows(lean_mib: float, naive_mib: float, lean_s: float, naive_s: float,
                 shape: tuple[int, int, int]) -> list[dict[str, Any]]:  # fmt: skip
    """The summary rows: peak extra memory and forward+backward time, lean against naive."""
    size = "B={} L={} K={}".format(*shape)
    return [
        row(f"uniform NELBO peak extra memory, {size} (lean vs naive)", "MiB", lean_mib,
            naive_mib, target=f"<= {TARGETS['memory']:g}",
            met=lean_mib / naive_mib <= TARGETS["memory"]),
        row(f"uniform NELBO forward+backward, {size} (lean vs naive)", "s", lean_s, naive_s,
            target=f"<= {TARGETS['time']:g}", met=lean_s / naive_s <= TARGETS["time"]),
    ]  # fmt: skip


# pytest-benchmark suites: `pytest benchmarks/bench_losses.py --benchmark-enable`.
_SMALL = (2, 128, 50257)


def test_uniform_nelbo_lean(benchmark) -> None:
    inputs = make_inputs(_SMALL)
    loss, grad = benchmark(forward_backward, "lean", inputs)
    assert loss.shape == _SMALL[:2] and grad.shape == _SMALL


def test_uniform_nelbo_naive(benchmark) -> None:
    inputs = make_inputs(_SMALL)
    benchmark(forward_backward, "naive", inputs)


def test_agreement_targets() -> None:
    agree = agreement((1, 16, 50257))
    assert agree["rel64"] <= TARGETS["rel64"] and agree["rel32"] <= TARGETS["rel32"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-probe", choices=sorted(IMPLEMENTATIONS))
    add_json_option(parser)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps({"peak_extra_bytes": _memory_probe(args.memory_probe)}))
    else:
        main(args.json)
