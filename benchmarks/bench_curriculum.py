"""What the curriculum buys: the variance of the training gradient, relaxed vs discrete input.

On one fixed batch and fixed noise levels (the curriculum's Gaussian window), draw the Gaussian
latent w_t many times. For each draw, compute the gradient of the uniform NELBO at
z_t = argmax w_t with respect to the denoiser's parameters twice: once feeding the relaxed input
softmax(w_t / tau) (Duo's curriculum), once feeding the one-hot z_t (the plain discrete process,
same law of z_t): ``discdiff.testing.gradient_variances``. The variance is the trace of the
gradient covariance over draws divided by the number of parameters; the ratio discrete /
relaxed > 1 means the curriculum lowers it.

    python -m benchmarks.bench_curriculum
    python -m benchmarks.bench_curriculum --json rows.json   # and the summary rows as JSON
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.rows import add_json_option, row, write_rows
from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.schedules import GammaSchedule
from discdiff.testing import gradient_variances, small_dit
from discdiff.timesteps import antithetic_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--taus", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    add_json_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = DualSchedule(GammaSchedule(-3.55, -1.85), GaussianArgmaxTransform(args.vocab_size))
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, args.vocab_size, (args.batch_size, args.length), generator=generator)
    t = antithetic_times(args.batch_size, u=0.5)
    model = small_dit(args.vocab_size)
    print(
        f"gradient variance at K={args.vocab_size}, B={args.batch_size}, L={args.length}, "
        f"{args.draws} latent draws, gamma in [-3.55, -1.85]"
    )
    print(f"{'tau':>8} | {'var relaxed':>12} | {'var discrete':>12} | {'discrete/relaxed':>16}")
    summary = []
    for tau in args.taus:
        start = time.perf_counter()
        relaxed, discrete = gradient_variances(model, x_0, t, schedule, tau=tau, draws=args.draws)
        print(
            f"{tau:8.0e} | {relaxed:12.4e} | {discrete:12.4e} | {discrete / relaxed:16.3f}"
            f"   ({time.perf_counter() - start:.1f} s)"
        )
        summary.append(row(f"gradient variance, relaxed (ours) vs discrete input, tau = {tau:g}",
                           "", relaxed, discrete, target="- (measurement)"))  # fmt: skip
    write_rows(args.json, summary)


if __name__ == "__main__":
    main()
