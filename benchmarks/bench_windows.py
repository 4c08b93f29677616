"""The noise windows of the curriculum and of DCD at any vocabulary size, before and after
windows in alpha.

    python -m benchmarks.bench_windows

The paper's gamma-windows (curriculum [-3.55, -1.85], DCD [-4, -1]) are tuned for K = 50257; the
same gamma covers very different discrete signal levels alpha = T(alpha_tilde) at another K. The
library's defaults are windows in alpha (``AlphaWindow``), turned into gamma through T^-1 for
the actual K: the same alpha range everywhere, the paper's gamma at K = 50257.
"""

from __future__ import annotations

import torch

from discdiff import DCDistiller, GammaSchedule, GaussianArgmaxTransform, UniformDiffusion
from discdiff.curriculum import GaussianCurriculum

SIZES = (30, 85, 300, 1000, 30522, 50257)
PAPER = {"curriculum": (-3.55, -1.85), "DCD": (-4.0, -1.0)}


def alpha_range(gamma: GammaSchedule, k: int) -> tuple[float, float]:
    """(alpha at t = 1, alpha at t = 0) that a gamma-window covers at vocabulary size k."""
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    alpha = GaussianArgmaxTransform(k)(gamma.alpha_tilde(t))
    return float(alpha[0]), float(alpha[1])


def rows() -> list[tuple[str, int, tuple[float, float], tuple[float, float], GammaSchedule]]:
    out = []
    for k in SIZES:
        curriculum = UniformDiffusion(k, curriculum=GaussianCurriculum()).curriculum_schedule
        dcd = DCDistiller(lambda z, s: z, k).schedule
        for name, dual in (("curriculum", curriculum), ("DCD", dcd)):
            assert dual is not None
            before = alpha_range(GammaSchedule(*PAPER[name]), k)
            out.append((name, k, before, alpha_range(dual.gamma, k), dual.gamma))
    return out


def main() -> None:
    print("alpha range covered (alpha_1 .. alpha_0) by the default window, before (the paper's "
          "gamma-window at every K) and after (a window in alpha, mapped through T^-1)")
    print(f"{'window':10s} {'K':>6s} {'before':>17s} {'after':>17s} {'gamma after':>19s}")
    for name, k, before, after, gamma in rows():
        print(f"{name:10s} {k:6d} {before[0]:7.4f} .. {before[1]:6.4f} {after[0]:7.4f} .. "
              f"{after[1]:6.4f}  [{gamma.gamma_min:7.3f}, {gamma.gamma_max:7.3f}]")


if __name__ == "__main__":
    main()
