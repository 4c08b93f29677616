"""Memory and time of the fused output layer + uniform NELBO against the materialised path.

    python -m benchmarks.bench_fused                   # the side-by-side table (a few minutes)
    python -m benchmarks.bench_fused --repeats 1       # quicker, noisier
    pytest benchmarks/bench_fused.py --benchmark-enable

One training step's head on the CPU: hidden (B, L, D) = (4, 256, 768), weight (K, D) and bias
(K,) with K = 50257 (GPT-2), float32, loss, then backward to hidden, weight and bias.

- materialised: logits = ``vocab_projection(hidden, weight, bias)`` (the DiT's own output
  projection), then the library's memory-lean ``uniform_nelbo(...).mean()``: the (B·L, K) logits
  and their gradient exist at the same time.
- fused: ``fused_linear_uniform_nelbo(..., reduction="mean")`` (gradient formed in the forward
  pass) and ``reduction="none"`` followed by ``.mean()`` (the backward recomputes the logits).

Targets (Concepts §3): peak extra memory <= 0.25x the materialised path's, time <= 1.2x, results
equal to float64 rounding (1e-10) and to 2e-5 in float32. Memory is the peak resident set
(``getrusage``) of a fresh subprocess per implementation above a baseline that already holds the
inputs and buffers the size of the three gradients (which every implementation must produce).
Times are medians over interleaved repeats in this process, one torch thread (the machine is
shared: the ratios are what matter).
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

import torch
from torch import Tensor

from benchmarks.rows import add_json_option, write_rows
from discdiff.losses import uniform_nelbo
from discdiff.losses.fused import fused_linear_uniform_nelbo
from discdiff.models.projection import vocab_projection

SHAPE = (4, 256, 768, 50257)  # B, L, D, K
TARGETS = {"memory": 0.25, "time": 1.2, "rel64": 1e-10, "rel32": 2e-5}

Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def make_inputs(shape=SHAPE, dtype: torch.dtype = torch.float32, seed: int = 0) -> Inputs:
    """hidden ~ N(0, 1), weight ~ N(0, 0.05²) (logits of scale ~1.4), z_t = x_0 on half the
    tokens, alpha_t ~ U[0.05, 0.95] per sequence, dalpha_t = -1."""
    b, length, d, k = shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, length, d, generator=g, dtype=dtype)
    weight = torch.randn(k, d, generator=g, dtype=dtype).mul_(0.05)
    bias = torch.randn(k, generator=g, dtype=dtype).mul_(0.1)
    x_0 = torch.randint(0, k, (b, length), generator=g)
    noise = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, x_0, noise)
    alpha = (0.05 + 0.9 * torch.rand(b, 1, generator=g)).to(dtype)
    dalpha = torch.full((b, 1), -1.0, dtype=dtype)
    return hidden, weight, bias, x_0, z_t, alpha, dalpha


def materialised(hidden, weight, bias, x_0, z_t, alpha, dalpha) -> Tensor:
    return uniform_nelbo(vocab_projection(hidden, weight, bias), x_0, z_t, alpha, dalpha).mean()


def fused_mean(hidden, weight, bias, x_0, z_t, alpha, dalpha) -> Tensor:
    return fused_linear_uniform_nelbo(
        hidden, weight, x_0, z_t, alpha, dalpha, bias=bias, reduction="mean"
    )


def fused_none(hidden, weight, bias, x_0, z_t, alpha, dalpha) -> Tensor:
    return fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, alpha, dalpha, bias=bias).mean()


IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "materialised": materialised,
    "fused (mean)": fused_mean,
    "fused (none)": fused_none,
}


def step(name: str, inputs: Inputs) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Loss and the gradients of hidden, weight and bias."""
    hidden, weight, bias, *rest = inputs
    leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]
    loss = IMPLEMENTATIONS[name](*leaves, *rest)
    loss.backward()
    return loss.detach(), tuple(t.grad for t in leaves)  # type: ignore[return-value]


def _peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _memory_probe(name: str) -> int:
    """In a fresh process: peak RSS above the inputs and gradient-sized buffers, for one step."""
    torch.set_num_threads(1)
    step(name, make_inputs((1, 2, 8, 64)))  # load kernels, allocator arenas
    inputs = make_inputs()
    leaves = [t.requires_grad_() for t in inputs[:3]]
    grad_sized = [torch.ones_like(t) for t in leaves]  # touched: resident
    baseline = _peak_rss_bytes()
    del grad_sized
    gc.collect()
    IMPLEMENTATIONS[name](*leaves, *inputs[3:]).backward()
    return max(0, _peak_rss_bytes() - baseline)


def peak_extra_memory(name: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_fused", "--memory-probe", name],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def median_times(inputs: Inputs, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds per implementation, runs interleaved."""
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for name in IMPLEMENTATIONS:  # warm up
        step(name, inputs)
    for _ in range(repeats):
        for name in IMPLEMENTATIONS:
            gc.collect()
            start = time.perf_counter()
            step(name, inputs)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def agreement(shape=(2, 128, 64, 50257)) -> dict[str, float]:
    """Max relative differences of the fused results (loss, then the worst gradient relative to
    its largest entry) against the materialised ones, in float64 and in float32; 256 rows make
    several blocks."""
    out = {}
    for label, dtype in (("64", torch.float64), ("32", torch.float32)):
        inputs = make_inputs(shape, dtype, seed=1)
        ref_loss, ref_grads = step("materialised", inputs)
        for name in ("fused (mean)", "fused (none)"):
            loss, grads = step(name, inputs)
            worst = max(_rel(g, r) for g, r in zip(grads, ref_grads, strict=True))
            key = name.split("(")[1].rstrip(")")
            out[f"loss{label} {key}"] = _rel(loss, ref_loss)
            out[f"grad{label} {key}"] = worst
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    parser.add_argument("--memory-probe", choices=sorted(IMPLEMENTATIONS))
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps({"peak_extra_bytes": _memory_probe(args.memory_probe)}))
        return
    torch.set_num_threads(1)
    b, length, d, k = SHAPE
    print(f"fused head + uniform NELBO, B={b} L={length} D={d} K={k}, float32, "
          "forward+backward to hidden, weight and bias, 1 thread")  # fmt: skip
    mem = {name: peak_extra_memory(name) for name in IMPLEMENTATIONS}
    times = median_times(make_inputs(), args.repeats)
    agree = agreement()
    mib = 2**20
    base = "materialised"
    print(f"{'':40}{'ours':>9}{'materialised':>14}{'ratio':>8}{'target':>10}")
    summary = []
    for name in ("fused (mean)", "fused (none)"):
        for label, key, ours, theirs, unit in (
            (f"peak extra memory (MiB), {name}", "memory", mem[name] / mib, mem[base] / mib,
             "MiB"),
            (f"time fwd+bwd (s), {name}", "time", times[name], times[base], "s"),
        ):  # fmt: skip
            ratio = ours / theirs
            # "none" recomputes the logits in the backward (one more matmul): no time target.
            target = None if (key == "time" and name.endswith("(none)")) else TARGETS[key]
            met = None if target is None else ratio <= target
            verdict = "" if met is None else (" ok" if met else " MISSED")
            shown = "-" if target is None else f"<= {target}"
            print(f"{label:40}{ours:9.2f}{theirs:14.2f}{ratio:8.3f}{shown:>10}{verdict}")
            summary.append({"metric": f"{label.split(' (')[0]}, {name} vs materialised, "
                            f"B={b} L={length} D={d} K={k}", "unit": unit, "ours": ours,
                            "baseline": theirs, "ratio": ratio, "target": target,
                            "met": met})  # fmt: skip
    logits_mib = b * length * k * 4 / mib
    print(f"(logits: {logits_mib:.0f} MiB, their gradient as much; buffers the size of the "
          "gradients of hidden, weight and bias are in the baseline)")  # fmt: skip
    print("agreement with the materialised path, max relative difference "
          "(gradients: worst of hidden, weight, bias, relative to the largest entry):")  # fmt: skip
    for key, value in agree.items():
        target = TARGETS["rel64"] if "64" in key else TARGETS["rel32"]
        verdict = "ok" if value <= target else "MISSED"
        print(f"  {key:14} {value:.2e}  (target <= {target:g}) {verdict}")
    write_rows(args.json, summary)


# pytest-benchmark suites: `pytest benchmarks/bench_fused.py --benchmark-enable`.
_SMALL = (2, 64, 768, 50257)


def test_fused_head(benchmark) -> None:
    inputs = make_inputs(_SMALL)
    loss, grads = benchmark(step, "fused (mean)", inputs)
    assert loss.ndim == 0 and grads[1].shape == (_SMALL[3], _SMALL[2])


def test_materialised_head(benchmark) -> None:
    benchmark(step, "materialised", make_inputs(_SMALL))


if __name__ == "__main__":
    main()
