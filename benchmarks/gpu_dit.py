"""GPU throughput and MFU of the reference DiT: forward + backward of ``small`` at L = 1024, bf16.

    python -m benchmarks.gpu_dit                       # eager, then torch.compile; ~2-4 minutes
    python -m benchmarks.gpu_dit --no-compile --batch-size 16 --steps 10

Prepared for a single-GPU machine (goal of issue 5: MFU >= 40 % on an H100). The model keeps
float32 weights and runs under ``torch.autocast(bfloat16)`` as in training; a step is forward,
cross-entropy over the K = 50258 logits and backward (no optimizer). MFU = achieved FLOPs /
peak dense bf16 FLOPs, with ``DiT.flops_per_token`` (6 N + 12 n_blocks L h, N = weights used
per token as matmuls, output projection included). It also checks that flash-attn (when
installed) and SDPA agree within bf16 tolerance.

Without CUDA it runs a tiny config for 2 steps on the CPU (a smoke test of this script; the
figures are not meaningful).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from discdiff.models import DiT
from discdiff.models.attention import flash_attn_available

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by device name, from the vendors' data sheets.
PEAK_BF16 = {
    "H100 SXM": 989.4e12,
    "H100 80GB HBM3": 989.4e12,
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def peak_flops(name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in name:
            return value
    return None


def make_step(
    model: torch.nn.Module,
    vocab_size: int,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> Callable[[], torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    k = vocab_size
    z_t = torch.randint(0, k, (batch_size, seq_len), device=device, generator=gen)
    targets = torch.randint(0, k, (batch_size, seq_len), device=device, generator=gen)
    sigma = torch.rand(batch_size, device=device, generator=gen)

    def step() -> torch.Tensor:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            logits = model(z_t, sigma)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(step: Callable[[], torch.Tensor], steps: int, warmup: int, device: torch.device):
    """Seconds per step (mean over ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def check_flash_vs_sdpa(model: DiT, device: torch.device, seq_len: int) -> None:
    if device.type != "cuda" or not flash_attn_available():
        print("flash-attn not installed (or no CUDA): attention runs on SDPA")
        return
    gen = torch.Generator(device=device).manual_seed(1)
    z_t = torch.randint(0, model.config.vocab_size, (2, seq_len), device=device, generator=gen)
    sigma = torch.rand(2, device=device, generator=gen)
    # Random (non-zero) output projection and gates so the comparison is not trivially 0 = 0.
    probe = DiT(model.config).to(device).eval()
    with torch.no_grad():
        for p in probe.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02, generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            flash = probe.set_attention_backend("flash")(z_t, sigma).float()
            sdpa = probe.set_attention_backend("sdpa")(z_t, sigma).float()
    err = ((flash - sdpa).abs().max() / sdpa.abs().max()).item()
    print(f"flash-attn vs SDPA (bf16, L={seq_len}): max |diff| / max |logit| = {err:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab-size", type=int, default=50258)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override peak bf16")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="skip later phases")
    args = parser.parse_args(argv)
    began = time.perf_counter()

    if torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name()
        model = DiT.from_preset(args.preset, vocab_size=args.vocab_size).to(device).train()
        batch_size, seq_len, steps, warmup = args.batch_size, args.seq_len, args.steps, args.warmup
    else:
        device, dtype, name = torch.device("cpu"), None, "CPU (fallback smoke test)"
        model = DiT.from_preset(
            "tiny", vocab_size=64, hidden_size=32, n_blocks=2, n_heads=2
        ).train()
        batch_size, seq_len, steps, warmup = 2, 16, 2, 0
        args.no_compile = True
    flash = device.type == "cuda" and flash_attn_available()
    peak = peak_flops(name, args.peak_tflops) if device.type == "cuda" else None
    flops_tok = model.flops_per_token(seq_len)
    print(
        f"device {name}; torch {torch.__version__}; {model.num_parameters():,} parameters; "
        f"B={batch_size} L={seq_len} K={model.config.vocab_size}; "
        f"attention {'flash-attn' if flash else 'SDPA'}; {flops_tok / 1e6:.1f} MFLOP/token"
    )
    if device.type == "cuda":
        check_flash_vs_sdpa(model, device, seq_len)

    vocab = model.config.vocab_size
    phases: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("eager", make_step(model, vocab, batch_size, seq_len, device, dtype))
    ]
    if not args.no_compile:
        compiled = torch.compile(model)
        phases.append(("compiled", make_step(compiled, vocab, batch_size, seq_len, device, dtype)))
    for label, step in phases:
        if time.perf_counter() - began > args.max_seconds:
            print(f"{label}: skipped (over --max-seconds={args.max_seconds})")
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        seconds = measure(step, steps, warmup, device)
        tokens_per_s = batch_size * seq_len / seconds
        achieved = flops_tok * tokens_per_s
        mfu = f"{100 * achieved / peak:.1f} %" if peak else "n/a (unknown peak; --peak-tflops)"
        memory = (
            f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
            if device.type == "cuda"
            else ""
        )
        print(
            f"{label:8s}: {seconds * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
            f"{achieved / 1e12:.1f} TFLOP/s, MFU {mfu}{memory} "
            f"(phase took {time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
