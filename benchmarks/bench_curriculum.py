"""What the curriculum buys: the variance of the training gradient, relaxed vs discrete input.

On one fixed batch and fixed noise levels (the curriculum's Gaussian window), draw the Gaussian
latent w_t many times. For each draw, compute the gradient of the uniform NELBO at
z_t = argmax w_t with respect to the denoiser's parameters twice: once feeding the relaxed input
softmax(w_t / tau) (Duo's curriculum), once feeding the one-hot z_t (the plain discrete process,
same law of z_t). The variance is the trace of the gradient covariance over draws divided by the
number of parameters; the ratio discrete / relaxed > 1 means the curriculum lowers it.

    python -m benchmarks.bench_curriculum
"""

from __future__ import annotations

import argparse
import time

import torch

from discdiff import losses, processes
from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.models import DiT
from discdiff.schedules import GammaSchedule
from discdiff.timesteps import antithetic_times


def make_model(vocab_size: int, seed: int = 0, logit_scale: float = 1.0) -> DiT:
    """A small DiT (hidden 64, 2 blocks, no dropout) whose zero-initialised layers get random
    weights, so every gradient is live; ``logit_scale`` widens the output logits (20 gives a few
    units of spread, a peaked x_hat like a trained model's)."""
    torch.manual_seed(seed)
    model = DiT.from_preset(
        "tiny",
        vocab_size=vocab_size,
        hidden_size=64,
        n_blocks=2,
        n_heads=2,
        cond_dim=32,
        dropout=0.0,
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.02)
        model.final.linear.weight.mul_(logit_scale)
    return model


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def gradient_variances(
    model: torch.nn.Module,
    x_0: torch.Tensor,
    t: torch.Tensor,
    schedule: DualSchedule,
    *,
    tau: float,
    draws: int,
    seed: int = 0,
) -> tuple[float, float]:
    """(variance with relaxed input, variance with discrete input), each the mean per-coordinate
    variance of the parameter gradient over ``draws`` latent draws at fixed x_0 (B, L), t (B,)."""
    vocab_size = schedule.transform.vocab_size
    alpha_tilde = schedule.alpha_tilde(t)[:, None]
    alpha_t = schedule.alpha(t)[:, None]
    dalpha_dt = schedule.dalpha_dt(t)[:, None]
    sigma = -torch.log(alpha_t.squeeze(-1))
    generator = torch.Generator().manual_seed(seed)
    grads: dict[str, list[torch.Tensor]] = {"relaxed": [], "discrete": []}
    for _ in range(draws):
        latent = processes.gaussian_latent(x_0, alpha_tilde, vocab_size, generator=generator)
        inputs = {"relaxed": processes.relax(latent.w_t, tau), "discrete": latent.z_t}
        for kind, z in inputs.items():
            model.zero_grad(set_to_none=True)
            logits = model(z, sigma)
            losses.uniform_nelbo(logits, x_0, latent.z_t, alpha_t, dalpha_dt).mean().backward()
            grads[kind].append(_flat_grad(model))
    relaxed, discrete = (torch.stack(grads[k]).var(dim=0).mean().item() for k in grads)
    return relaxed, discrete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--taus", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = DualSchedule(GammaSchedule(-3.55, -1.85), GaussianArgmaxTransform(args.vocab_size))
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, args.vocab_size, (args.batch_size, args.length), generator=generator)
    t = antithetic_times(args.batch_size, u=0.5)
    model = make_model(args.vocab_size)
    print(
        f"gradient variance at K={args.vocab_size}, B={args.batch_size}, L={args.length}, "
        f"{args.draws} latent draws, gamma in [-3.55, -1.85]"
    )
    print(f"{'tau':>8} | {'var relaxed':>12} | {'var discrete':>12} | {'discrete/relaxed':>16}")
    for tau in args.taus:
        start = time.perf_counter()
        relaxed, discrete = gradient_variances(model, x_0, t, schedule, tau=tau, draws=args.draws)
        print(
            f"{tau:8.0e} | {relaxed:12.4e} | {discrete:12.4e} | {discrete / relaxed:16.3f}"
            f"   ({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
