"""Classifier-free guidance where the truth is known.

    python -m benchmarks.bench_guidance

Two classes y with known p(x | y) over K = 4 tokens, L = 1, and the optimal denoiser: p(x | y)
with the label, p(x) = sum_y p(y) p(x | y) with the null label (for L = 1 the leave-one-out law
is the law itself). The ancestral sampler with tail="none" is then exact at any number of steps,
so gamma = 1 must give p(x | y) and gamma = 0 p(x); gamma > 1 sharpens towards the class. The
table gives, for each gamma, the sampled law's total variation to both, and the mass on y's mode.
"""

from __future__ import annotations

import torch

from discdiff import MaskedDiffusion, UniformDiffusion

K = 4
LAW = torch.tensor([[0.70, 0.15, 0.10, 0.05], [0.05, 0.10, 0.25, 0.60]], dtype=torch.float64)
NULL = 2


def oracle(extra: int = 0):
    table = torch.cat([LAW, LAW.mean(0, keepdim=True)]).log().float()

    def denoiser(z_t, sigma, label):
        logits = table[label].unsqueeze(1).expand(*z_t.shape, K)
        if extra:  # the masked model's mask logit (ignored by SUBS)
            logits = torch.cat([logits, torch.zeros(*z_t.shape, extra)], dim=-1)
        return logits

    return denoiser


def main(n: int = 40_000, y: int = 1) -> None:
    print(f"K={K}, L=1, class y={y}: p(x|y)={LAW[y].tolist()}, p(x)={LAW.mean(0).tolist()}; "
          f"{n} samples per row, 8 steps, tail 'none'")  # fmt: skip
    print(f"{'process':8s} {'gamma':>5s} {'TV to p(x|y)':>13s} {'TV to p(x)':>11s} "
          f"{'mass on mode':>13s}")  # fmt: skip
    for name, diffusion, model in (("uniform", UniformDiffusion(K), oracle()),
                                   ("masked", MaskedDiffusion(K), oracle(extra=1))):
        for gamma in (0.0, 0.5, 1.0, 2.0, 3.0):
            g = torch.Generator().manual_seed(0)
            x = diffusion.sample(model, n, 1, 8, tail="none", cond={"label": torch.full((n,), y)},
                                 guidance_scale=gamma, uncond={"label": torch.full((n,), NULL)},
                                 generator=g)  # fmt: skip
            law = torch.bincount(x.flatten(), minlength=K).double() / n
            tv_c = 0.5 * float((law - LAW[y]).abs().sum())
            tv_u = 0.5 * float((law - LAW.mean(0)).abs().sum())
            print(f"{name:8s} {gamma:5.1f} {tv_c:13.4f} {tv_u:11.4f} "
                  f"{float(law[LAW[y].argmax()]):13.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
