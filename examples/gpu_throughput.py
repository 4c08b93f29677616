"""Training throughput of the OWT-shaped model on synthetic tokens (bf16 autocast on CUDA).

    python -m examples.gpu_throughput                        # DiT small, L = 1024, K = 50257
    python -m examples.gpu_throughput --objectives duo,ar --steps 300 --batch 32
    python -m examples.gpu_throughput --tiny                 # a seconds-long CPU check

For each objective it runs ``--warmup`` untimed steps, then ``--steps`` timed optimizer steps
(forward, backward, AdamW) on uniformly random token ids, and reports tokens/s, ms/step, peak
memory and the model-FLOPs utilisation against ``--peak-tflops`` (H100 SXM dense bf16: 989).
Objectives: ``duo`` (discrete phase), ``duo-curriculum`` (relaxed Gaussian latents, a dense
(B, L, K) soft input), ``duo-curriculum-topk`` (Duo++: a top-k bag), ``mdlm``, ``ar``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["main", "measure"]


def _objective(name: str, vocab_size: int, top_k: int) -> Any:
    from discdiff.diffusion import GaussianCurriculum, MaskedDiffusion, UniformDiffusion
    from discdiff.losses import ar_loss

    if name == "duo":
        return UniformDiffusion(vocab_size).loss, vocab_size, False
    if name in ("duo-curriculum", "duo-curriculum-topk"):
        curriculum = GaussianCurriculum(
            end_step=10**12, top_k=top_k if name.endswith("topk") else None
        )
        return UniformDiffusion(vocab_size, curriculum=curriculum).loss, vocab_size, False
    if name == "mdlm":
        masked = MaskedDiffusion(vocab_size)
        return masked.loss, masked.model_vocab_size, False
    if name == "ar":
        return (lambda model, x, **kw: ar_loss(model(x[:, :-1]), x[:, 1:])), vocab_size, True
    raise ValueError(f"unknown objective {name!r}")


def measure(
    name: str, *, preset: str, vocab_size: int, seq_len: int, batch: int, steps: int,
    warmup: int, device: torch.device, bf16: bool, compile: bool, top_k: int,
    overrides: dict[str, Any], peak_tflops: float,
) -> dict[str, Any]:  # fmt: skip
    from discdiff.models import DiT

    loss_fn, model_vocab, causal = _objective(name, vocab_size, top_k)
    torch.manual_seed(0)
    model = DiT.from_preset(preset, vocab_size=model_vocab, causal=causal, **overrides).to(device)
    step_fn_model: Any = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    data = torch.randint(0, vocab_size, (batch, seq_len), device=device, generator=gen)
    amp: Any = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one_step() -> float:
        with amp:
            loss = loss_fn(step_fn_model, data, generator=gen).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()) if not device.type == "cuda" else 0.0

    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens_per_s = steps * batch * seq_len / elapsed
    soft = name == "duo-curriculum"
    flops = model.flops_per_token(seq_len, training=True, soft_input=soft)
    return {
        "objective": name,
        "params_M": round(model.num_parameters() / 1e6, 1),
        "batch": batch,
        "seq_len": seq_len,
        "tokens_per_s": round(tokens_per_s),
        "ms_per_step": round(1000 * elapsed / steps, 1),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda" else None,
        "mfu": round(flops * tokens_per_s / (peak_tflops * 1e12), 3) if device.type == "cuda"
        else None,
        "precision": "bf16 autocast" if bf16 else "float32",
        "compiled": compile,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m examples.gpu_throughput",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--objectives", default="duo,duo-curriculum,duo-curriculum-topk,mdlm,ar")
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--tiny", action="store_true", help="tiny model, CPU float32, a few steps")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    overrides: dict[str, Any] = {"dropout": 0.0}
    if args.tiny:
        overrides.update(hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16)
        args.preset, args.vocab_size, args.seq_len, args.batch = "tiny", 64, 32, 4
        args.steps, args.warmup, args.top_k = 2, 1, 4
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for name in [s for s in args.objectives.split(",") if s]:
        row = measure(
            name, preset=args.preset, vocab_size=args.vocab_size, seq_len=args.seq_len,
            batch=args.batch, steps=args.steps, warmup=args.warmup, device=device, bf16=bf16,
            compile=args.compile, top_k=args.top_k, overrides=overrides,
            peak_tflops=args.peak_tflops,
        )  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{'objective':22s} {'tokens/s':>10s} {'ms/step':>8s} {'mem GiB':>8s} {'MFU':>6s}")
    for r in rows:
        mem = "-" if r["peak_mem_GiB"] is None else f"{r['peak_mem_GiB']:.1f}"
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.2f}"
        print(f"{r['objective']:22s} {r['tokens_per_s']:>10,d} {r['ms_per_step']:>8.1f} "
              f"{mem:>8s} {mfu:>6s}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
