"""Small trainable denoisers on a ``MarkovChain``, their training and distillation loops, and
their few-step evaluation: the known-answer experiments of Duo, MDLM, DCD and SDTT in minutes on
a CPU.

- ``ToyDenoiser``: a residual MLP over the whole sequence; accepts ids (B, L), soft inputs
  (B, L, K) and (ids, weights) bags; returns (B, L, K) logits.
- ``Corrected``: a fixed denoiser plus a trainable ``ToyDenoiser`` correction starting at zero.
- ``train_duo`` / ``train_mdlm``: UniformDiffusion (Gaussian curriculum, then discrete) /
  MaskedDiffusion training; ``distill``: a DCD or SDTT distiller's whole round schedule.
- ``evaluate_uniform`` / ``evaluate_masked``: ``sample_metrics`` of few-step samples.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from discdiff.diffusion import GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.samplers import sample_uniform
from discdiff.schedules import GammaSchedule, Schedule
from discdiff.sdtt import SDTTDistiller
from discdiff.testing.laws import sample_metrics
from discdiff.testing.toys import MarkovChain
from discdiff.typing import Bag

__all__ = [
    "Corrected",
    "ToyDenoiser",
    "cosine_warmup",
    "distill",
    "evaluate_masked",
    "evaluate_uniform",
    "train_duo",
    "train_mdlm",
]


class ToyDenoiser(nn.Module):
    """A residual MLP over the whole (flattened one-hot) sequence, conditioned on sigma (B,).

    Accepts token ids (B, L), soft inputs (B, L, K) and (ids, weights) bags; returns (B, L, K).
    """

    def __init__(self, vocab_size: int, length: int, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.vocab_size, self.length = vocab_size, length
        self.n_freq = 4
        self.inp = nn.Linear(length * vocab_size + 1 + 2 * self.n_freq, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(),
                nn.Linear(hidden, hidden),
            )
            for _ in range(depth)
        )  # fmt: skip
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, length * vocab_size))

    def forward(self, z_t: Any, sigma: Tensor) -> Tensor:
        if isinstance(z_t, Bag):
            ids, weights = z_t.ids, z_t.weights
            x = torch.zeros(*ids.shape[:2], self.vocab_size, device=ids.device)
            x = x.scatter_add(-1, ids, weights.to(x.dtype))
        elif z_t.is_floating_point():
            x = z_t.float()
        else:
            x = F.one_hot(z_t, self.vocab_size).float()
        b = x.shape[0]
        alpha = torch.exp(-sigma.float()).unsqueeze(-1)  # (B, 1) in [0, 1]
        freq = math.pi * alpha * torch.arange(1, self.n_freq + 1, device=alpha.device)
        h = self.inp(torch.cat([x.reshape(b, -1), alpha, freq.sin(), freq.cos()], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).view(b, self.length, self.vocab_size)


class Corrected(nn.Module):
    """``base(z_t, sigma)`` plus a trainable ``ToyDenoiser`` correction whose output starts at 0,
    so that training starts from ``base`` exactly (e.g. an ``ExactMaskedDenoiser``)."""

    def __init__(self, base: nn.Module, vocab_size: int, length: int, hidden: int = 64,
                 depth: int = 1):  # fmt: skip
        super().__init__()
        self.base = base
        self.correction = ToyDenoiser(vocab_size, length, hidden, depth)
        last = self.correction.out[-1]
        assert isinstance(last, nn.Linear)  # the ToyDenoiser's own layout
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        return self.base(z_t, sigma) + self.correction(z_t, sigma)


def cosine_warmup(opt: torch.optim.Optimizer, total: int, warmup: int = 50):
    """A linear warmup over ``warmup`` steps times a cosine from 1 to 0.1 over ``total``."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_duo(
    law: MarkovChain,
    length: int,
    *,
    steps: int,
    curriculum_steps: int,
    gamma_min: float,
    gamma_max: float,
    batch_size: int = 256,
    lr: float = 2e-3,
    hidden: int = 256,
    depth: int = 3,
    generator: torch.Generator | None = None,
) -> ToyDenoiser:
    """Train a ToyDenoiser with UniformDiffusion: the Gaussian curriculum for the first
    ``curriculum_steps`` steps, then the discrete process (log-linear schedule)."""
    k = law.vocab_size
    model = ToyDenoiser(k, length, hidden, depth)
    curriculum = GaussianCurriculum(
        window=GammaSchedule(gamma_min, gamma_max), end_step=curriculum_steps
    )
    diffusion = UniformDiffusion(k, curriculum=curriculum)
    return _fit(model, diffusion, law, length, steps, batch_size, lr, generator)


def train_mdlm(
    law: MarkovChain,
    length: int,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    hidden: int = 256,
    depth: int = 3,
    generator: torch.Generator | None = None,
) -> ToyDenoiser:
    """Train a ToyDenoiser with K + 1 outputs on the masked NELBO (``MaskedDiffusion``,
    log-linear schedule, no time conditioning)."""
    k = law.vocab_size
    model = ToyDenoiser(k + 1, length, hidden, depth)
    diffusion = MaskedDiffusion(k)
    return _fit(model, diffusion, law, length, steps, batch_size, lr, generator)


def _fit(
    model: ToyDenoiser, diffusion: UniformDiffusion | MaskedDiffusion, law: MarkovChain,
    length: int, steps: int, batch_size: int, lr: float, generator: torch.Generator | None,
) -> ToyDenoiser:  # fmt: skip
    """AdamW with a cosine warm-up on the diffusion's loss, fresh samples of ``law`` each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = cosine_warmup(opt, steps)
    for step in range(steps):
        x_0 = law.sample(batch_size, length, generator)
        loss = diffusion.loss(model, x_0, step=step, generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def distill(
    teacher: nn.Module,
    law: MarkovChain,
    length: int,
    distiller: DCDistiller | SDTTDistiller,
    *,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float = 0.99,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Run ``distiller``'s whole round schedule on a copy of ``teacher``; returns the student's
    EMA (the student itself when ``distiller.refresh_from == "student"``)."""
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    for step in range(distiller.steps_per_round * distiller.n_rounds):
        x_0 = law.sample(batch_size, length, generator)
        loss = distiller.loss(student, x_0, step, generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(student)
        distiller.maybe_refresh(step, student, ema)
    final = ema.module if distiller.refresh_from == "ema" else student
    return final.eval()


def evaluate_uniform(
    model: nn.Module,
    law: MarkovChain,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    n: int,
    tail: str = "greedy",
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``sample_metrics`` of n samples drawn in ``steps`` steps by ``sample_uniform``.

    ``tail`` is the library's: "greedy" (N steps to t_min, then argmax x_hat of one more call),
    "map" (the same call, the mode of q(z_0 | z_t, x_hat): keeps each token's own evidence) or
    "none" (N ancestral steps down to t = 0, the exact ancestral law).
    """
    x = sample_uniform(
        model, n, length, steps, schedule=schedule, vocab_size=law.vocab_size, tail=tail,
        generator=generator,
    )  # fmt: skip
    return sample_metrics(x, law)


def evaluate_masked(
    distiller: SDTTDistiller,
    model: nn.Module,
    law: MarkovChain,
    length: int,
    steps: int,
    *,
    n: int,
    tail: str = "none",
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``sample_metrics`` of n samples drawn by ``distiller.sample`` (the masked sampler) in
    ``steps`` steps."""
    x = distiller.sample(model, n, length, steps, tail=tail, generator=generator)
    return sample_metrics(x, law)
