"""``make gpu-bench``: the GPU figures of the library in one table, each beside its floor or
baseline, in about 5 minutes on one H100 / H200.

    python -m benchmarks.gpu            # on a CUDA GPU
    python -m benchmarks.gpu --tiny     # the same code on the CPU at tiny shapes (a smoke test)

Rows (full sizes; K = 50257 for the kernels, 50258 for the DiT as in the paper's runs):

- copy bandwidth: a device-to-device copy of 2 GiB, bytes read + written per second. The
  floors below divide by it.
- DiT small, forward + backward (bf16 autocast, cross-entropy head), B32 L1024: MFU eager and
  under ``torch.compile`` (``benchmarks.gpu_dit``), against the 40 % goal.
- uniform NELBO (``discdiff.kernels.uniform_nelbo``) forward + backward on float32 logits,
  B8 L1024: time against the floor of 3 passes over the logits (read, read, write the gradient)
  at the copy bandwidth; the PyTorch path as a baseline; its peak extra memory against the size
  of the gradient it must write.
- ancestral step (``discdiff.kernels.uniform_ancestral_step``), B8 L1024: time against the floor
  of one read of the logits; the PyTorch path as a baseline; the step with a ``RowStream``
  (``seed=``, rows keyed by (seed, row)) against the step with a generator (target <= 1.1x).
- fused head (``discdiff.losses.fused_linear_uniform_nelbo``) in a training step of the small DiT,
  B8 L1024: peak memory above the weights against the same step with materialised logits.
- the training step of the small DiT with ``UniformDiffusion.loss``, B8 L1024, float32: the
  default path (the library's dispatch rule) against ``fused=True``, ``fused=False`` and the
  readable reference formula, reduced (``reduction="mean"``) and per token (``.mean()`` by the
  caller); target: the default within 5 % of the fastest (``benchmarks.bench_loss_step``).
- an 8-step sample of the small DiT, B32 L1024, greedy tail (9 calls): the share of the time
  spent outside the denoiser, for the library's ``sample_uniform`` and for a loop over
  ``discdiff.kernels.uniform_ancestral_step`` (target <= 10 %).
- block sampling with the small DiT as a block model (``benchmarks.bench_blocks``), B8 L1024,
  b in {4, 16, 64}, K = 50257, N = 4 denoising calls per block: the KV cache of the clean blocks
  against recomputing the prefix; the cached cost of the last block against the first (flat:
  <= 1.2x) and against the recompute path (<= 0.25x at b = 16).

Without a GPU it exits with a message, unless ``--tiny``: then every row runs on the CPU at tiny
shapes (no MFU, no memory figures; the numbers only show that the code runs).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from benchmarks import bench_blocks, bench_loss_step
from benchmarks.gpu_dit import make_step, peak_flops
from discdiff import kernels
from discdiff.losses.fused import fused_linear_uniform_nelbo
from discdiff.models import DiT
from discdiff.models.config import PRESETS
from discdiff.samplers import RowStream, sample_uniform
from discdiff.schedules import LogLinearSchedule

__all__ = ["FULL", "TINY", "Row", "Sizes", "head_parts", "main"]


@dataclass(frozen=True)
class Sizes:
    preset: str
    overrides: dict = field(default_factory=dict)
    dit_vocab: int = 50258
    dit: tuple[int, int] = (32, 1024)  # B, L of the MFU step
    kernel: tuple[int, int, int] = (8, 1024, 50257)  # B, L, K of the loss and the step
    head: tuple[int, int] = (8, 1024)  # B, L of the training step with the fused head
    sample: tuple[int, int, int] = (32, 1024, 8)  # B, L, steps
    blocks: tuple[int, tuple[int, ...], int] = (1024, (4, 16, 64), 8)  # L, block sizes, B
    copy_mib: int = 2048
    repeats: int = 10
    warmup: int = 3


FULL = Sizes(preset="small")
TINY = Sizes(preset="tiny", overrides={"hidden_size": 32, "n_blocks": 2, "n_heads": 2},
             dit_vocab=64, dit=(2, 16), kernel=(2, 16, 64), head=(2, 16), sample=(2, 16, 2),
             blocks=(8, (2, 4), 1), copy_mib=8, repeats=1, warmup=1)  # fmt: skip


@dataclass
class Row:
    metric: str
    ours: float | None
    unit: str
    reference: float | None = None  # the floor or the baseline
    reference_is: str = "-"  # "floor", "baseline" or "-"
    target: str = "-"
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference


# --- measuring ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device, sizes: Sizes) -> float:
    """Median wall seconds of ``fn`` after warm-up, synchronised on the device."""
    for _ in range(sizes.warmup):
        fn()
    times = []
    for _ in range(sizes.repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak allocated bytes during ``fn`` above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        fn()
        return None
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth(device: torch.device, sizes: Sizes) -> float:
    """Bytes read + written per second by a device copy of ``copy_mib`` MiB."""
    n = sizes.copy_mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    t = seconds(lambda: dst.copy_(src), device, sizes)
    return 2 * src.numel() * 4 / t


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model(sizes: Sizes, device: torch.device) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset(sizes.preset, vocab_size=sizes.dit_vocab, **sizes.overrides)
    with torch.no_grad():  # random, non-zero output layer and gates (zero-init otherwise)
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02)
    return model.to(device)


def head_parts(model: DiT, z_t: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(hidden (B, L, D), weight (K, D), bias (K,)): the DiT up to its output projection, through
    its ``discdiff.denoise.FusedHead`` methods (what the diffusion losses fuse with)."""
    hidden = model.hidden_states(z_t, sigma)
    weight, bias = model.output_projection()
    return hidden, weight, bias


def _loss_inputs(b: int, length: int, k: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    x_0 = torch.randint(0, k, (b, length), generator=g, device=device)
    noise = torch.randint(0, k, (b, length), generator=g, device=device)
    z_t = torch.where(torch.rand(b, length, generator=g, device=device) < 0.5, x_0, noise)
    alpha = 0.05 + 0.9 * torch.rand(b, 1, generator=g, device=device)
    dalpha = torch.full((b, 1), -1.0, device=device)
    return x_0, z_t, alpha, dalpha


# --- the rows -----------------------------------------------------------------------------------


def bench_dit(sizes: Sizes, device: torch.device, name: str) -> list[Row]:
    b, length = sizes.dit
    model = _model(sizes, device).train()
    dtype = torch.bfloat16 if device.type == "cuda" else None
    peak = peak_flops(name, None) if device.type == "cuda" else None
    flops = model.flops_per_token(length) * b * length
    rows = []
    backend = "inductor" if device.type == "cuda" else "eager"  # C++ inductor: minutes on a CPU
    for label, net in (("eager", model), ("compiled", torch.compile(model, backend=backend))):
        step = make_step(net, sizes.dit_vocab, b, length, device, dtype)
        t = seconds(step, device, sizes)
        mfu = 100 * flops / t / peak if peak else None
        rows.append(Row(f"DiT {sizes.preset} fwd+bwd MFU, {label}, B{b} L{length} "
                        f"K{sizes.dit_vocab} ({1e3 * t:.1f} ms/step)", mfu, "%",
                        target=">= 40 %", met=None if mfu is None else mfu >= 40))  # fmt: skip
    return rows


def bench_nelbo(sizes: Sizes, device: torch.device, bandwidth: float) -> list[Row]:
    b, length, k = sizes.kernel
    g = torch.Generator(device=device).manual_seed(1)
    logits = torch.randn(b, length, k, generator=g, device=device).mul_(2.0).requires_grad_()
    x_0, z_t, alpha, dalpha = _loss_inputs(b, length, k, device)
    nbytes = logits.numel() * logits.element_size()
    floor = 3 * nbytes / bandwidth

    def step(backend: str) -> None:
        logits.grad = None
        kernels.uniform_nelbo(logits, x_0, z_t, alpha, dalpha, backend=backend).sum().backward()

    fast = "auto"
    t_fast = seconds(lambda: step(fast), device, sizes)
    t_torch = seconds(lambda: step("torch"), device, sizes)
    logits.grad = None
    extra = peak_extra_bytes(lambda: step(fast), device)
    shape = f"B{b} L{length} K{k} float32"
    return [
        Row(f"uniform NELBO fwd+bwd, {shape} (floor: 3 passes at the copy bandwidth)",
            1e3 * t_fast, "ms", 1e3 * floor, "floor", "<= 1.5x floor", t_fast <= 1.5 * floor),
        Row("  the same, PyTorch path", 1e3 * t_torch, "ms", 1e3 * floor, "floor"),
        Row("uniform NELBO peak extra memory (reference: the gradient's size)",
            None if extra is None else extra / 2**20, "MiB", nbytes / 2**20, "baseline",
            "<= 1.1x", None if extra is None else extra <= 1.1 * nbytes),
    ]  # fmt: skip


def bench_step(sizes: Sizes, device: torch.device, bandwidth: float) -> list[Row]:
    b, length, k = sizes.kernel
    g = torch.Generator(device=device).manual_seed(2)
    logits = torch.randn(b, length, k, generator=g, device=device).mul_(2.0)
    z_t = torch.randint(0, k, (b, length), generator=g, device=device)
    floor = logits.numel() * logits.element_size() / bandwidth
    gen = torch.Generator(device=device).manual_seed(3)

    def step(backend: str) -> Tensor:
        return kernels.uniform_ancestral_step(logits, z_t, 0.6, 0.5, generator=gen,
                                              backend=backend)  # fmt: skip

    stream = RowStream(3, length)  # what seed= draws from: each row keyed by (seed, row)
    t_fast = seconds(lambda: step("auto"), device, sizes)
    t_torch = seconds(lambda: step("torch"), device, sizes)
    t_seed = seconds(lambda: kernels.uniform_ancestral_step(logits, z_t, 0.6, 0.5,
                                                            generator=stream), device, sizes)
    return [
        Row(f"ancestral step, B{b} L{length} K{k} float32 (floor: 1 read at the copy bandwidth)",
            1e3 * t_fast, "ms", 1e3 * floor, "floor", "<= 1.5x floor", t_fast <= 1.5 * floor),
        Row("  the same, PyTorch path", 1e3 * t_torch, "ms", 1e3 * floor, "floor"),
        Row("  the same, seed= (a RowStream) beside generator=", 1e3 * t_seed, "ms",
            1e3 * t_fast, "baseline", "<= 1.1x", t_seed <= 1.1 * t_fast),
    ]  # fmt: skip


def bench_head(sizes: Sizes, device: torch.device) -> list[Row]:
    b, length = sizes.head
    k = sizes.dit_vocab
    model = _model(sizes, device).train()
    x_0, z_t, alpha, dalpha = _loss_inputs(b, length, k, device, seed=4)
    sigma = -torch.log(alpha).view(b)

    def materialised() -> None:
        model.zero_grad(set_to_none=True)
        with _autocast(device):
            logits = model(z_t, sigma)
        kernels.uniform_nelbo(logits, x_0, z_t, alpha, dalpha).mean().backward()

    def fused() -> None:
        model.zero_grad(set_to_none=True)
        with _autocast(device):
            hidden, weight, bias = head_parts(model, z_t, sigma)
            loss = fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, alpha, dalpha, bias=bias,
                                              reduction="mean")  # fmt: skip
        loss.backward()

    materialised(), fused()  # warm up (and allocate the gradients once)
    model.zero_grad(set_to_none=True)
    mem = {}
    for name, fn in (("materialised", materialised), ("fused", fused)):
        extra = peak_extra_bytes(fn, device)
        model.zero_grad(set_to_none=True)
        mem[name] = None if extra is None else extra / 2**30
    t_fused = seconds(fused, device, sizes)
    t_mat = seconds(materialised, device, sizes)
    ok = None if mem["fused"] is None else mem["fused"] < mem["materialised"]
    return [
        Row(f"training step peak memory above the weights, fused head, DiT {sizes.preset} "
            f"B{b} L{length} K{k}", mem["fused"], "GiB", mem["materialised"], "baseline",
            "< materialised", ok),
        Row("  its step time (baseline: materialised logits)", 1e3 * t_fused, "ms",
            1e3 * t_mat, "baseline"),
    ]  # fmt: skip


def bench_loss_paths(sizes: Sizes, device: torch.device) -> list[Row]:
    """The DiT step with its loss by each path of ``UniformDiffusion.loss``, reduced and per
    token: the default against each other path (``benchmarks.bench_loss_step``)."""
    from discdiff import UniformDiffusion

    b, length = sizes.head
    k = sizes.dit_vocab
    model = _model(sizes, device).train()
    diffusion = UniformDiffusion(k)
    x_0 = torch.randint(0, k, (b, length), device=device,
                        generator=torch.Generator(device=device).manual_seed(5))  # fmt: skip
    rows = []
    for mode in bench_loss_step.MODES:
        times = {path: seconds(bench_loss_step.step_fn(diffusion, model, x_0, path, mode),
                               device, sizes)
                 for path in bench_loss_step.PATHS}  # fmt: skip
        fastest = min(bench_loss_step.PATHS[1:], key=times.__getitem__)
        ok = times["default"] <= bench_loss_step.TARGET * times[fastest]
        for other in bench_loss_step.PATHS[1:]:
            target = f"<= {bench_loss_step.TARGET} x fastest" if other == fastest else "-"
            rows.append(Row(f"training step, DiT {sizes.preset} B{b} L{length} K{k}, {mode}: "
                            f"default vs {other}", 1e3 * times["default"], "ms",
                            1e3 * times[other], "baseline", target,
                            ok if other == fastest else None))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


class _TimedDenoiser:
    """The model under bf16 autocast, timing its own calls (synchronised)."""

    def __init__(self, model: DiT, device: torch.device):
        self.model, self.device, self.seconds = model, device, 0.0

    def __call__(self, z_t: Tensor, sigma: Tensor, **cond) -> Tensor:
        _sync(self.device)
        start = time.perf_counter()
        with _autocast(self.device):
            logits = self.model(z_t, sigma, **cond)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return logits


def _kernel_loop(denoiser, b: int, length: int, steps: int, k: int, device: torch.device,
                 gen: torch.Generator) -> Tensor:  # fmt: skip
    """N ancestral steps on linspace(1, 1e-5, N + 1), then argmax x̂ at t_min (greedy tail)."""
    schedule = LogLinearSchedule()
    times = torch.linspace(1.0, 1e-5, steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(times).tolist()
    z = torch.randint(0, k, (b, length), generator=gen, device=device)
    for a_t, a_s in zip(alphas[:-1], alphas[1:], strict=True):
        sigma = torch.full((b,), -math.log(a_t), device=device)
        z = kernels.uniform_ancestral_step(denoiser(z, sigma), z, a_s, a_t, generator=gen)
    sigma = torch.full((b,), -math.log(alphas[-1]), device=device)
    return denoiser(z, sigma).argmax(-1)


def bench_sampling(sizes: Sizes, device: torch.device) -> list[Row]:
    b, length, steps = sizes.sample
    k = sizes.dit_vocab
    model = _model(sizes, device).eval()
    rows = []
    runs = {
        "sample_uniform": lambda den, gen: sample_uniform(
            den, b, length, steps, schedule=LogLinearSchedule(), vocab_size=k, generator=gen,
            device=device),
        "kernel loop": lambda den, gen: _kernel_loop(den, b, length, steps, k, device, gen),
    }  # fmt: skip
    for label, run in runs.items():
        with torch.no_grad():
            run(_TimedDenoiser(model, device), torch.Generator(device=device).manual_seed(0))
            den = _TimedDenoiser(model, device)
            _sync(device)
            start = time.perf_counter()
            run(den, torch.Generator(device=device).manual_seed(1))
            _sync(device)
            total = time.perf_counter() - start
        share = 100 * (total - den.seconds) / total
        rows.append(Row(f"{steps}-step sample, DiT {sizes.preset} B{b} L{length}, {label}: time "
                        f"outside the denoiser ({1e3 * total:.0f} ms in all)", share, "%",
                        target="<= 10 %", met=share <= 10))  # fmt: skip
    return rows


def bench_block_sampling(sizes: Sizes, device: torch.device) -> list[Row]:
    """Block sampling over the KV cache against recomputing the clean prefix, per block size:
    the mean cost per generated token, the cached cost's flatness in the block index and the
    last block's speed-up (``benchmarks.bench_blocks``; bf16 autocast on CUDA)."""
    length, block_sizes, batch = sizes.blocks
    overrides = dict(sizes.overrides)
    layers = overrides.pop("n_blocks", PRESETS[sizes.preset]["n_blocks"])
    rows = []
    for b in block_sizes:
        model = bench_blocks.block_dit(b, vocab_size=sizes.kernel[2], layers=layers,
                                       preset=sizes.preset, device=device, **overrides)  # fmt: skip
        with _autocast(device):
            timings = bench_blocks.measure(model, length, steps=4, points=5,
                                           repeats=min(sizes.repeats, 5), batch=batch)  # fmt: skip
        print(bench_blocks.table(timings), flush=True)
        first, last = timings[0], timings[-1]
        what = f"block sampling, DiT {sizes.preset} B{batch} L{length} b={b}"
        speedup = last.cached / last.recompute <= 0.25 if b == 16 else None
        rows += [
            Row(f"{what}: cached ms per token, mean over blocks", 1e3 * sum(
                t.cached for t in timings) / len(timings) / b, "ms", 1e3 * sum(
                t.recompute for t in timings) / len(timings) / b, "baseline"),
            Row(f"{what}: cached cost, last block / first", 1e3 * last.cached, "ms",
                1e3 * first.cached, "baseline", "<= 1.2x", last.cached / first.cached <= 1.2),
            Row(f"{what}: last block, cached vs recompute", 1e3 * last.cached, "ms",
                1e3 * last.recompute, "baseline", "<= 0.25x" if b == 16 else "-", speedup),
        ]  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- the table ----------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def table(rows: list[Row]) -> str:
    head = ("metric", "ours", "unit", "floor/baseline", "ratio", "target", "met")
    cells = [head] + [
        (r.metric, _fmt(r.ours), r.unit,
         "-" if r.reference is None else f"{_fmt(r.reference)} ({r.reference_is})",
         _fmt(r.ratio), r.target, "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--tiny", action="store_true",
                        help="run the same code on the CPU at tiny shapes (a smoke test)")
    args = parser.parse_args(argv)
    if args.tiny:
        device, sizes, name = torch.device("cpu"), TINY, "CPU (--tiny: figures not meaningful)"
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), FULL
        name = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        print("benchmarks.gpu: no CUDA GPU on this machine; it measures GPU throughput and "
              "memory. Run it on a GPU host, or `python -m benchmarks.gpu --tiny` to check the "
              "code on the CPU.", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    began = time.perf_counter()
    triton = "Triton kernels" if device.type == "cuda" and kernels.triton_available() else (
        "PyTorch paths (no Triton kernels on this device)")
    print(f"device {name}; torch {torch.__version__}; {triton}", flush=True)
    bandwidth = copy_bandwidth(device, sizes)
    rows = [Row(f"copy bandwidth, {sizes.copy_mib} MiB (read + write)", bandwidth / 1e9, "GB/s")]
    for part in (lambda: bench_nelbo(sizes, device, bandwidth),
                 lambda: bench_step(sizes, device, bandwidth),
                 lambda: bench_head(sizes, device),
                 lambda: bench_loss_paths(sizes, device),
                 lambda: bench_sampling(sizes, device),
                 lambda: bench_block_sampling(sizes, device),
                 lambda: bench_dit(sizes, device, name)):  # fmt: skip
        rows += part()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type != "cuda":
        for row in rows:
            row.met = None  # CPU times and the GPU floors are not comparable
    print(table(rows))
    print(f"({time.perf_counter() - began:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
