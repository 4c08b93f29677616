"""The DiT training step with its loss: the default of ``UniformDiffusion.loss`` against each path.

    python -m benchmarks.bench_loss_step                  # tiny and small presets (a few minutes)
    python -m benchmarks.bench_loss_step --presets tiny --repeats 3

One training step on the CPU, one torch thread: ``UniformDiffusion(K).loss(model, x_0)`` of a
DiT preset (K = 50257, B = 2, L = 128, random non-zero weights), then backward to every
parameter. Paths:

- default: ``loss(model, x_0)`` with no ``fused`` argument (the library's dispatch rule);
- fused: ``fused=True`` (the loss from the last hidden state and the output projection);
- materialised: ``fused=False`` (the (B, L, K) logits, then the memory-lean uniform NELBO);
- reference: the logits, then ``discdiff.losses.uniform_nelbo_reference`` (Concepts §3 term by
  term, dense over K).

Two ways of asking for the loss: "reduced" (``reduction="mean"``, the common training step) and
"per-token" (``reduction="none"``, the caller reduces with ``.mean()``). On a version of the
library without ``reduction`` both call ``loss(...)`` and reduce with ``.mean()``, so the same
script measures the code before and after a change. Target: the default is the fastest path to
within 5 % (ratio default / fastest other path <= 1.05). Times are medians over interleaved
repeats (the machine is shared: the ratios are what matter).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.rows import add_json_option, write_rows
from discdiff import UniformDiffusion, processes
from discdiff.denoise import noise_level
from discdiff.losses import uniform_nelbo_reference
from discdiff.models import DiT
from discdiff.timesteps import antithetic_times

__all__ = ["PATHS", "make_model", "step_fn", "time_paths"]

K = 50257
SHAPE = (2, 128)  # B, L
PATHS = ("default", "fused", "materialised", "reference")
MODES = ("reduced", "per-token")
TARGET = 1.05


def make_model(preset: str, vocab_size: int = K, **overrides) -> DiT:
    """A DiT preset with random non-zero weights (its output layer is zero-initialised)."""
    torch.manual_seed(0)
    model = DiT.from_preset(preset, vocab_size=vocab_size, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02)
    return model.train()


def _has_reduction(diffusion: UniformDiffusion) -> bool:
    return "reduction" in inspect.signature(diffusion.loss).parameters


def _reference_loss(diffusion: UniformDiffusion, model: DiT, x_0: Tensor, g) -> Tensor:
    """The discrete loss of ``diffusion`` with the logits and the readable formula."""
    t = antithetic_times(x_0.shape[0], eps=diffusion.eps, generator=g, device=x_0.device)
    alpha = diffusion.schedule.alpha(t).unsqueeze(-1)
    dalpha = diffusion.schedule.dalpha_dt(t).unsqueeze(-1)
    z_t = processes.uniform_corrupt(x_0, alpha, diffusion.vocab_size, generator=g)
    logits = model(z_t, noise_level(alpha, x_0.shape[0], x_0.device))
    return uniform_nelbo_reference(logits, x_0, z_t, alpha, dalpha)


def step_fn(
    diffusion: UniformDiffusion, model: DiT, x_0: Tensor, path: str, mode: str
) -> Callable[[], Tensor]:
    """One training step (loss, backward to the parameters) of ``path`` asked for as ``mode``."""
    kwargs: dict = {} if path == "default" else {"fused": path == "fused"}
    if mode == "reduced" and _has_reduction(diffusion):
        kwargs["reduction"] = "mean"

    def run() -> Tensor:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same dropout masks on every path
        g = torch.Generator(device=x_0.device).manual_seed(1)
        if path == "reference":
            loss = _reference_loss(diffusion, model, x_0, g)
        else:
            loss = diffusion.loss(model, x_0, generator=g, **kwargs)
        if loss.ndim:  # per token: the caller reduces
            loss = loss.mean()
        loss.backward()
        return loss.detach()

    return run


def time_paths(preset: str, repeats: int, shape=SHAPE, vocab_size: int = K) -> dict:
    """{(mode, path): median seconds}, all runs of a preset interleaved."""
    model = make_model(preset, vocab_size)
    diffusion = UniformDiffusion(vocab_size)
    x_0 = torch.randint(0, vocab_size, shape, generator=torch.Generator().manual_seed(0))
    fns = {(m, p): step_fn(diffusion, model, x_0, p, m) for m in MODES for p in PATHS}
    losses = {key: fn() for key, fn in fns.items()}  # warm up
    # A sanity check that every path computes the same loss (float32, 50k-term sums; the tests
    # hold the paths to each other in float64).
    ref = losses[("reduced", "materialised")].double()
    for key, value in losses.items():
        if abs(value.double() - ref) > 1e-3 * ref.abs():
            raise AssertionError(f"{preset} {key}: loss {value.item()} != reference {ref.item()}")
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: sorted(ts)[len(ts) // 2] for key, ts in times.items()}


def report(preset: str, times: dict) -> list[dict]:
    """Print one preset's table; return its summary rows (default against each other path)."""
    b, length = SHAPE
    print(f"\nDiT {preset}, B={b} L={length} K={K}, training step (loss + backward), seconds")
    print(f"{'':12}" + "".join(f"{p:>14}" for p in PATHS) + f"{'default/fastest':>17}")
    summary = []
    for mode in MODES:
        row = {p: times[(mode, p)] for p in PATHS}
        fastest = min((p for p in PATHS if p != "default"), key=row.__getitem__)
        ratio = row["default"] / row[fastest]
        met = ratio <= TARGET
        print(f"{mode:12}" + "".join(f"{row[p]:14.3f}" for p in PATHS)
              + f"{ratio:12.3f} ({fastest}) {'ok' if met else 'MISSED'}")  # fmt: skip
        for other in PATHS[1:]:
            is_fastest = other == fastest
            summary.append({
                "metric": f"step time, default vs {other}, DiT {preset}, {mode}, B={b} L={length}",
                "unit": "s", "ours": row["default"], "baseline": row[other],
                "ratio": row["default"] / row[other],
                "target": TARGET if is_fastest else None, "met": met if is_fastest else None,
            })  # fmt: skip
    return summary


def crossover(rows_list: list[int], vocab_list: list[int], d: int, repeats: int) -> None:
    """The output layer + uniform NELBO alone (``benchmarks.bench_fused``'s step at (rows, D, K)):
    fused over materialised time, reduced and per-token, for each rows x K."""
    from benchmarks.bench_fused import make_inputs, step

    print(f"\noutput layer + loss alone, D={d}: fused / materialised time (fwd+bwd), 1 thread")
    print(f"{'rows':>6}{'K':>8}{'rows*K':>12}{'materialised s':>16}{'reduced':>10}"
          f"{'per-token':>11}")
    names = ("materialised", "fused (mean)", "fused (none)")
    for k in vocab_list:
        for rows in rows_list:
            inputs = make_inputs((1, rows, d, k))
            for name in names:
                step(name, inputs)  # warm up
            times: dict = {name: [] for name in names}
            for _ in range(repeats):
                for name in names:
                    start = time.perf_counter()
                    step(name, inputs)
                    times[name].append(time.perf_counter() - start)
            med = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
            base = med["materialised"]
            print(f"{rows:6d}{k:8d}{rows * k:12d}{base:16.4f}"
                  f"{med['fused (mean)'] / base:10.3f}{med['fused (none)'] / base:11.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small", help="comma-separated DiT presets")
    parser.add_argument("--repeats", type=int, default=5)
    add_json_option(parser)
    parser.add_argument("--crossover", action="store_true",
                        help="only the output layer + loss at several rows x K (the crossover)")
    parser.add_argument("--hidden", type=int, default=256, help="D of the --crossover runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.crossover:
        crossover([64, 256, 1024, 4096], [4096, 16384, 50257], args.hidden, args.repeats)
        return
    summary = []
    for preset in args.presets.split(","):
        summary += report(preset, time_paths(preset, args.repeats))
    print(f"\ntarget: default <= {TARGET} x the fastest other path, per preset and mode")
    write_rows(args.json, summary)


if __name__ == "__main__":
    main()
