"""One Discrete Consistency Distillation step against a straightforward implementation (issue 8).

    python -m benchmarks.bench_dcd_step                     # side-by-side table (B=4, L=128)
    python -m benchmarks.bench_dcd_step --quick             # smaller (B=2, L=64)
    pytest benchmarks/bench_dcd_step.py --benchmark-enable  # small timings via pytest-benchmark

A step at K = 50257 (GPT-2): times t (antithetic) and s = t - dt, the shared-noise argmax pair
(z_t, z_s), the frozen teacher at (z_s, s), the student at (z_t, t), the per-token
KL(p_student || p_teacher), and its backward into the student.

- ours: ``DCDistiller.loss`` (the pair from three scalars per token, never the (B, L, K) noise;
  a KL whose backward recomputes the softmaxes chunk by chunk).
- baseline: Concepts §6 written straight down: eps ~ N(0, I_K) drawn as a (B, L, K) float32
  tensor, w_t = alpha_tilde_t x + sigma_tilde_t eps and w_s likewise, z = argmax of each, and
  the KL from dense log_softmax tensors that autograd keeps for backward.

Both use the same times, schedule and denoiser, so the difference is the DCD machinery itself.
Two denoisers: a minimal one (embedding of width 16 -> K logits, so the step is mostly DCD) and
a small DiT (hidden 64, 2 blocks), where the denoiser's share of the step grows. Target: the
step with the minimal denoiser takes <= 0.5x the baseline's time. The agreement checks compare
the two KLs on the same logits, and the law of (z_t, z_s) of both against T(alpha_tilde).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.rows import add_json_option, write_rows
from discdiff import testing
from discdiff.distill import DCDistiller, token_kl
from discdiff.schedules import GammaSchedule
from discdiff.timesteps import antithetic_times

K_GPT2 = 50257
TARGET = 0.5  # ours / baseline, minimal denoiser
SIZES = {"full": (4, 128), "quick": (2, 64)}


class TableDenoiser(nn.Module):
    """The minimal denoiser: embedding (K -> d), a sigma shift, a linear map to K logits."""

    def __init__(self, vocab_size: int, width: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(vocab_size, width, generator=g))
        self.time = nn.Parameter(torch.randn(width, generator=g))
        self.out = nn.Parameter(torch.randn(width, vocab_size, generator=g) * (2.0 / width**0.5))

    def forward(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        h = self.embed[z_t] + sigma[:, None, None] * self.time
        return h @ self.out


def small_dit(vocab_size: int, seed: int = 0) -> nn.Module:
    """``discdiff.testing.small_dit`` with logits of a few units of spread, so x_hat is peaked
    rather than flat."""
    return testing.small_dit(vocab_size, seed, logit_scale=20.0)


def make_distiller(student: nn.Module, vocab_size: int = K_GPT2) -> DCDistiller:
    """The paper's settings: gamma in [-4, -1], T = 512 (round 0: dt = 1/512)."""
    return DCDistiller(student, vocab_size, window=GammaSchedule(-4.0, -1.0), initial_steps=512,
                       steps_per_round=10_000, n_rounds=5)  # fmt: skip


def baseline_loss(
    distiller: DCDistiller, student: nn.Module, x_0: Tensor, generator: torch.Generator
) -> Tensor:
    """Concepts §6 straight down: dense Gaussian noise, two argmaxes, a dense KL. (B, L)."""
    k = distiller.vocab_size
    dt = distiller.dt(0)
    t = antithetic_times(x_0.shape[0], eps=dt + distiller.eps, generator=generator,
                         dtype=torch.float64)  # fmt: skip
    s = (t - dt).clamp_min(0.0)
    gamma = distiller.schedule.gamma
    a_t, a_s = gamma.alpha_tilde(t).float(), gamma.alpha_tilde(s).float()
    eps = torch.randn(*x_0.shape, k, generator=generator)
    onehot = F.one_hot(x_0, k).float()
    w_t = a_t[:, None, None] * onehot + (1 - a_t**2).sqrt()[:, None, None] * eps
    w_s = a_s[:, None, None] * onehot + (1 - a_s**2).sqrt()[:, None, None] * eps
    z_t, z_s = w_t.argmax(-1), w_s.argmax(-1)
    sigma_t = -torch.log(distiller.schedule.alpha(t)).float()
    sigma_s = -torch.log(distiller.schedule.alpha(s)).clamp_min(0.0).float()
    with torch.no_grad():
        teacher_logits = distiller.teacher(z_s, sigma_s)
    log_p = torch.log_softmax(student(z_t, sigma_t), -1)
    log_q = torch.log_softmax(teacher_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def ours_loss(
    distiller: DCDistiller, student: nn.Module, x_0: Tensor, generator: torch.Generator
) -> Tensor:
    return distiller.loss(student, x_0, 0, generator=generator)


def make_step(
    which: str, denoiser: str, batch: int, length: int, seed: int = 0
) -> Callable[[], None]:
    """One forward + backward DCD step of ``which`` (ours | baseline) with ``denoiser``."""
    student = TableDenoiser(K_GPT2) if denoiser == "table" else small_dit(K_GPT2)
    distiller = make_distiller(student)
    gen = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(0, K_GPT2, (batch, length), generator=gen)
    loss_fn = ours_loss if which == "ours" else baseline_loss

    def step() -> None:
        loss = loss_fn(distiller, student, x_0, gen)
        loss.mean().backward()
        student.zero_grad(set_to_none=True)

    return step


def median_times(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call, calls interleaved (one warm-up each)."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def kl_agreement(batch: int = 2, length: int = 16, seed: int = 1) -> float:
    """Max relative difference of ``token_kl`` and the dense KL on the same float64 logits."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, length, K_GPT2, generator=g, dtype=torch.float64) * 3
    q = p + torch.randn(batch, length, K_GPT2, generator=g, dtype=torch.float64) * 0.3
    ours = token_kl(p, q, dtype=torch.float64)
    log_p, log_q = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
    dense = (log_p.exp() * (log_p - log_q)).sum(-1)
    return float(((ours - dense).abs() / dense.abs()).max())


def pair_law(n_tokens: int = 4096, seed: int = 2) -> dict[str, float]:
    """P(z_t = x), P(z_s = x), P(z_t = z_s) at one (t, s) pair: ours (``argmax_pair``), the
    dense baseline and, for the first two, the exact value from the duality,
    P(z = x) = alpha + (1 - alpha) / K with alpha = T(alpha_tilde). ``sd_*``: the Monte Carlo
    standard deviation of one estimate."""
    from discdiff.distill import argmax_pair

    distiller = make_distiller(TableDenoiser(K_GPT2))
    gamma, transform = distiller.schedule.gamma, distiller.schedule.transform
    t = torch.tensor([0.5], dtype=torch.float64)
    s = t - 16 / 512
    a_t, a_s = gamma.alpha_tilde(t), gamma.alpha_tilde(s)
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(0, K_GPT2, (1, n_tokens), generator=g)
    zt, zs = argmax_pair(x_0, a_t[:, None], a_s[:, None], K_GPT2, generator=g)
    out = {"ours_t": float((zt == x_0).double().mean()),
           "ours_s": float((zs == x_0).double().mean()),
           "ours_ts": float((zt == zs).double().mean())}  # fmt: skip
    hits = {"t": 0.0, "s": 0.0, "ts": 0.0}
    chunk = 256
    for lo in range(0, n_tokens, chunk):
        x = x_0[:, lo : lo + chunk]
        eps = torch.randn(*x.shape, K_GPT2, generator=g, dtype=torch.float64)
        onehot = F.one_hot(x, K_GPT2).double()
        bt = (a_t * onehot + (1 - a_t**2).sqrt() * eps).argmax(-1)
        bs = (a_s * onehot + (1 - a_s**2).sqrt() * eps).argmax(-1)
        hits["t"] += float((bt == x).sum())
        hits["s"] += float((bs == x).sum())
        hits["ts"] += float((bt == bs).sum())
    out.update({f"baseline_{k}": v / n_tokens for k, v in hits.items()})
    for key, a in (("t", a_t), ("s", a_s)):
        alpha = float(transform(a))
        exact = alpha + (1 - alpha) / K_GPT2
        out[f"exact_{key}"] = exact
        out[f"sd_{key}"] = math.sqrt(exact * (1 - exact) / n_tokens)
    return out


def summary(quick: bool = False, repeats: int | None = None) -> list[dict[str, object]]:
    """Measure ours vs the baseline and print the side-by-side lines; returns the summary rows
    (seconds per step) for ``benchmarks.run``."""
    torch.set_num_threads(1)
    batch, length = SIZES["quick" if quick else "full"]
    repeats = repeats or (3 if quick else 5)
    rows: list[dict[str, object]] = []
    print(f"DCD step (forward + backward), B={batch} L={length} K={K_GPT2}, float32, 1 thread, "
          f"median of {repeats}")  # fmt: skip
    print(f"{'denoiser':<22}{'ours (s)':>10}{'baseline (s)':>14}{'ratio':>8}{'target':>10}")
    for denoiser, label in (("table", "minimal (emb 16)"), ("dit", "small DiT (64 x 2)")):
        times = median_times(
            {w: make_step(w, denoiser, batch, length) for w in ("ours", "baseline")}, repeats
        )
        ratio = times["ours"] / times["baseline"]
        target = TARGET if denoiser == "table" else None
        met = None if target is None else ratio <= target
        flag = "-" if target is None else f"<= {target} {'ok' if met else 'MISSED'}"
        print(f"{label:<22}{times['ours']:>10.3f}{times['baseline']:>14.3f}{ratio:>8.3f}"
              f"{flag:>14}")  # fmt: skip
        rows.append({"suite": "dcd_step", "metric": f"DCD step, {label}, B={batch} L={length}",
                     "unit": "s", "ours": times["ours"], "baseline": times["baseline"],
                     "ratio": ratio, "target": target, "met": met})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=2, L=64, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    add_json_option(parser)
    args = parser.parse_args(argv)
    rows = summary(args.quick, args.repeats)
    print(f"agreement: token_kl vs dense KL, float64, max relative difference "
          f"{kl_agreement():.1e}")  # fmt: skip
    law = pair_law(1024 if args.quick else 4096)
    print("law of the pair at t = 0.5, s = t - 16/512 (fraction of tokens):")
    for key, what in (("t", "z_t = x"), ("s", "z_s = x")):
        print(f"  {what}: ours {law[f'ours_{key}']:.4f}, baseline {law[f'baseline_{key}']:.4f}, "
              f"exact {law[f'exact_{key}']:.4f} +- {law[f'sd_{key}']:.4f}")
    print(f"  z_t = z_s: ours {law['ours_ts']:.4f}, baseline {law['baseline_ts']:.4f}")
    write_rows(args.json, rows)


# ---- pytest-benchmark (small sizes; `pytest benchmarks/bench_dcd_step.py --benchmark-enable`)

_B, _L = 2, 128


def test_dcd_step_ours(benchmark) -> None:
    step = make_step("ours", "table", _B, _L)
    benchmark(step)


def test_dcd_step_baseline(benchmark) -> None:
    step = make_step("baseline", "table", _B, _L)
    benchmark(step)


def test_kl_agreement() -> None:
    assert kl_agreement(1, 8) < 1e-9


if __name__ == "__main__":
    main()
