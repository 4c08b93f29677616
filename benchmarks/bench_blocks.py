"""Block-diffusion sampling with the DiT's KV cache against recomputing the clean prefix.

    python -m benchmarks.bench_blocks              # L = 1024, b in {4, 16, 64}, K = 50257
    python -m benchmarks.bench_blocks --quick      # L = 256, one repeat
    python -m benchmarks.bench_blocks --json rows.json

The call pattern of block sampling: for each block k, N = 4 denoising calls then one call that
appends the finished block, over a DiT of the small preset's geometry (hidden 768, 12 heads,
K = 50257) with fewer transformer blocks (2 by default, ``--layers``: the recompute path at 12
would take tens of minutes per block size on a 2-core CPU).

- cached: ``model(z_k, sigma, kv_cache=cache)`` N times (b tokens over the k·b cached ones), then
  ``model.prefill(x_k, cache)``;
- recompute: the training pass on the (k + 1)·b-token prefix, ``x_0`` = the prefix, N times,
  projecting only the last block's hidden states to logits (the cheapest recompute: the other
  positions' logits are never read); no prefill.

Both are timed at evenly spaced block indices (first and last included) with the cache already
holding the k·b clean tokens, each the best of ``--repeats`` runs after a warm-up run (the run
least disturbed by other processes). On the CPU the figures are process CPU time on one thread
(the wall time of a quiet machine; a shared machine's wall time, printed beside them, mostly
measures the other processes); on a GPU, wall time. The cost per generated token is the block's
cost / b, and its mean over the (evenly spaced) indices estimates a whole run's. Targets: the
cached cost flat in the block index (last / first <= 1.2) and, at b = 16, >= 4x faster than
recomputing at the last block.
One torch thread; batch 1. ``benchmarks.gpu`` runs the same rows on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.models import DiT

__all__ = ["BlockTiming", "block_dit", "main", "measure", "summary_rows", "table"]

VOCAB = 50257
FLAT_TARGET, SPEEDUP_TARGET, SPEEDUP_BLOCK = 1.2, 4.0, 16


@dataclass(frozen=True)
class BlockTiming:
    """Seconds for one block's calls at block index ``index`` (``steps`` denoising calls, and
    for ``cached`` the prefill), the best of the repeats. ``cached`` and ``recompute`` are on
    the verdict's clock: process CPU time on the CPU (one thread: the wall time of a quiet
    machine, which a shared machine's wall time is not), wall time on a GPU; ``*_wall`` are
    the wall-clock times."""

    block_size: int
    index: int
    cached: float
    recompute: float
    cached_wall: float
    recompute_wall: float

    @property
    def ratio(self) -> float:
        """recompute / cached: the cache's speed-up at this block."""
        return self.recompute / self.cached


def block_dit(block_size: int, *, vocab_size: int = VOCAB, layers: int = 2,
              preset: str = "small", device: torch.device | str = "cpu", seed: int = 0,
              **overrides: Any) -> DiT:  # fmt: skip
    """A block DiT of ``preset``'s geometry with ``layers`` transformer blocks, every weight
    drawn at random (nothing zero-initialised, so no layer is skipped by a zero), eval mode."""
    torch.manual_seed(seed)
    model = DiT.from_preset(preset, vocab_size=vocab_size, n_blocks=layers, block_size=block_size,
                            dropout=0.0, **overrides)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], None], device: torch.device, repeats: int,
                  reset: Callable[[], None] = lambda: None) -> tuple[float, float]:  # fmt: skip
    """(verdict clock, wall clock) seconds of ``fn``, each the fewest over ``repeats`` runs
    after one warm-up run (the run least disturbed by other processes); the verdict clock is
    process CPU time on the CPU, wall time on a GPU. ``reset`` runs (untimed) after each."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        if i:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        reset()
    return (min(walls) if device.type == "cuda" else min(cpus)), min(walls)


def time_block(model: DiT, x: Tensor, z: Tensor, k: int, steps: int, repeats: int) -> BlockTiming:
    """Both paths at block k of the clean ids x (B, L), z (B, L) the noisy ids."""
    b, device = model.block_size, x.device
    assert b is not None
    prefix, block = x[:, : k * b], slice(k * b, (k + 1) * b)
    sigma_block = torch.full(z[:, block].shape, 2.0, device=device)
    cache = model.new_kv_cache(max_len=x.shape[1])
    if k:
        model.prefill(prefix, cache)

    def cached() -> None:
        for _ in range(steps):
            model(z[:, block], sigma_block, kv_cache=cache)
        model.prefill(x[:, block], cache)

    both = torch.cat([prefix, z[:, block]], dim=1)  # the uncached input: z = x_0 = [x_<k, z_k]
    sigma = torch.cat([torch.zeros_like(prefix, dtype=sigma_block.dtype), sigma_block], dim=1)
    weight, bias = model.output_projection()

    def recompute() -> None:
        for _ in range(steps):
            hidden = model.hidden_states(both, sigma, x_0=both)[:, -b:]  # (B, b, h)
            torch.addmm(bias, hidden.flatten(0, 1), weight.T)  # the last block's logits

    fast, fast_wall = _best_seconds(cached, device, repeats, reset=lambda: cache.crop(k * b))
    slow, slow_wall = _best_seconds(recompute, device, repeats)
    return BlockTiming(b, k, fast, slow, fast_wall, slow_wall)


def block_indices(n_blocks: int, points: int) -> list[int]:
    """``points`` evenly spaced block indices in [0, n_blocks), first and last included."""
    if points >= n_blocks:
        return list(range(n_blocks))
    return sorted({round(i * (n_blocks - 1) / (points - 1)) for i in range(points)})


@torch.inference_mode()
def measure(model: DiT, length: int, steps: int, points: int, repeats: int, batch: int = 1,
            seed: int = 0) -> list[BlockTiming]:  # fmt: skip
    """Timings of both paths at ``points`` block indices of an L-token sample."""
    b = model.block_size
    assert b is not None and length % b == 0
    device = model.output_projection()[0].device
    gen = torch.Generator().manual_seed(seed)
    k = model.config.vocab_size
    x, z = (torch.randint(0, k, (batch, length), generator=gen).to(device) for _ in range(2))
    return [time_block(model, x, z, i, steps, repeats)
            for i in block_indices(length // b, points)]  # fmt: skip


def table(timings: list[BlockTiming]) -> str:
    """One line per block index: ms per block and per generated token, both paths."""
    lines = [f"{'b':>3s} {'block':>5s} {'cached ms':>10s} {'ms/token':>9s} {'recompute ms':>13s} "
             f"{'ms/token':>9s} {'speed-up':>9s} {'(wall ms: cached':>17s} {'recompute)':>11s}"]
    for t in timings:
        b = t.block_size
        lines.append(f"{b:3d} {t.index:5d} {1e3 * t.cached:10.2f} {1e3 * t.cached / b:9.3f} "
                     f"{1e3 * t.recompute:13.2f} {1e3 * t.recompute / b:9.3f} {t.ratio:8.2f}x "
                     f"{1e3 * t.cached_wall:17.2f} {1e3 * t.recompute_wall:11.2f}")
    return "\n".join(lines)


def summary_rows(timings: list[BlockTiming], what: str) -> list[dict[str, Any]]:
    """The rows of one block size (``benchmarks/rows.py``): the mean cost per generated token,
    the flatness of the cached path (last / first block) and the last block's cached /
    recompute ratio (target <= 1/4 at b = 16)."""
    b = timings[0].block_size
    first, last = timings[0], timings[-1]
    cached = statistics.mean(t.cached for t in timings) / b
    slow = statistics.mean(t.recompute for t in timings) / b
    is_target = b == SPEEDUP_BLOCK
    last_ratio = last.cached / last.recompute
    return [
        row(f"{what} b={b}: mean time per generated token, cached vs recompute", "s", cached, slow),
        row(f"{what} b={b}: cached cost, last block {last.index} / first block", "s",
            last.cached, first.cached, target=f"<= {FLAT_TARGET}",
            met=last.cached / first.cached <= FLAT_TARGET),
        row(f"{what} b={b}: last block {last.index}, cached vs recompute", "s", last.cached,
            last.recompute, target=f"<= {1 / SPEEDUP_TARGET:g}" if is_target else "-",
            met=last_ratio <= 1 / SPEEDUP_TARGET if is_target else None),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (small: 12)")
    parser.add_argument("--steps", type=int, default=4, help="denoising calls per block")
    parser.add_argument("--points", type=int, default=5, help="block indices timed per b")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (best kept)")
    parser.add_argument("--quick", action="store_true", help="L = 256, one repeat")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.length, args.repeats = 256, 1
    torch.set_num_threads(1)
    what = (f"DiT small geometry, {args.layers} layers, K={args.vocab}, L={args.length}, "
            f"N={args.steps}, CPU 1 thread, process CPU time")  # fmt: skip
    print(f"torch {torch.__version__}; {what}; time per block = {args.steps} denoising calls "
          "(+ 1 prefill, cached)", flush=True)  # fmt: skip
    rows = []
    for b in args.blocks:
        model = block_dit(b, vocab_size=args.vocab, layers=args.layers)
        timings = measure(model, args.length, args.steps, args.points, args.repeats)
        print(table(timings), flush=True)
        first, last = timings[0], timings[-1]
        print(f"b={b}: flatness of the cached path (last / first block) "
              f"{last.cached / first.cached:.3f} (target <= {FLAT_TARGET}); recompute / cached "
              f"at the last block {last.ratio:.2f}x"
              + (f" (target >= {SPEEDUP_TARGET:g}x)" if b == SPEEDUP_BLOCK else ""), flush=True)
        rows += summary_rows(timings, what)
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
