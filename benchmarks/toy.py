"""A toy world where the truth is known: a peaked Markov chain over short sequences.

Used by ``benchmarks/bench_distill.py`` and ``tests/test_distill.py`` to check that Discrete
Consistency Distillation does what it claims: a Duo model trained on the chain, sampled in a
few steps, produces incoherent sequences (each step draws tokens independently given z_t); the
distilled student, in the same few steps, lands much closer to the chain. Everything about the
chain is exact: the likelihood of a sequence, the entropy, the unigram and bigram laws, and the
optimal denoiser.

Pieces: ``MarkovChain`` (the law, its exact statistics and exact samples), ``ToyDenoiser`` (a
small MLP over the whole sequence that accepts ids, soft (B, L, K) inputs and (ids, weights)
bags), ``train_duo`` (UniformDiffusion with the Gaussian curriculum, then the discrete phase),
``distill`` (a plain DCDistiller loop with an EMA) and ``sample_metrics``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from discdiff.diffusion import GaussianCurriculum, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.samplers import sample_uniform
from discdiff.schedules import GammaSchedule, Schedule
from discdiff.typing import Bag


@dataclass(frozen=True)
class MarkovChain:
    """x_1 ~ initial, x_{l+1} | x_l ~ transition[x_l]; both float64."""

    initial: Tensor  # (K,)
    transition: Tensor  # (K, K), rows sum to one

    @property
    def vocab_size(self) -> int:
        return self.initial.shape[0]

    @staticmethod
    def peaked(
        vocab_size: int, *, successors: tuple[float, ...] = (0.6, 0.35), seed: int = 0
    ) -> MarkovChain:
        """Each state moves to a few random successors with the given probabilities and spreads
        the remaining mass evenly over the other states (so every sequence has finite NLL)."""
        g = torch.Generator().manual_seed(seed)
        k, n = vocab_size, len(successors)
        rest = (1.0 - sum(successors)) / (k - n)
        transition = torch.full((k, k), rest, dtype=torch.float64)
        for i in range(k):
            chosen = torch.randperm(k, generator=g)[:n]
            transition[i, chosen] = torch.tensor(successors, dtype=torch.float64)
        initial = torch.full((k,), 1.0 / k, dtype=torch.float64)
        return MarkovChain(initial, transition)

    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws, int64 (n, length)."""
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial, n, replacement=True, generator=generator)
        for i in range(1, length):
            rows = self.transition[x[:, i - 1]]
            x[:, i] = torch.multinomial(rows, 1, generator=generator).squeeze(-1)
        return x

    def nll(self, x: Tensor) -> Tensor:
        """-log p(x) per sequence (n,), exact, in nats."""
        x = x.cpu()
        log_p = torch.log(self.initial)[x[:, 0]]
        log_p = log_p + torch.log(self.transition)[x[:, :-1], x[:, 1:]].sum(-1)
        return -log_p

    def marginals(self, length: int) -> Tensor:
        """p(x_l = k), (length, K)."""
        rows = [self.initial]
        for _ in range(length - 1):
            rows.append(rows[-1] @ self.transition)
        return torch.stack(rows)

    def entropy(self, length: int) -> float:
        """H(x_1..x_L) in nats: the mean NLL of exact samples."""
        h_rows = -(self.transition * torch.log(self.transition)).sum(-1)
        h0 = -(self.initial * torch.log(self.initial)).sum()
        return float(h0 + (self.marginals(length)[:-1] @ h_rows).sum())

    def unigram(self, length: int) -> Tensor:
        """The law of a token at a uniformly chosen position, (K,)."""
        return self.marginals(length).mean(0)

    def bigram(self, length: int) -> Tensor:
        """The law of (x_l, x_{l+1}) at a uniformly chosen l, flattened (K * K,)."""
        m = self.marginals(length)[:-1]
        return (m.unsqueeze(-1) * self.transition).mean(0).reshape(-1)


def _counts(values: Tensor, size: int) -> Tensor:
    c = torch.bincount(values.reshape(-1).cpu(), minlength=size).to(torch.float64)
    return c / c.sum()


def sample_metrics(x: Tensor, law: MarkovChain) -> dict[str, float]:
    """Exact mean NLL (nats per sequence) of samples x (n, L) under ``law``, total variation of
    their unigram and bigram frequencies from the law's, and the fraction of distinct samples."""
    k, length = law.vocab_size, x.shape[1]
    unigram = _counts(x, k)
    bigram = _counts(x[:, :-1] * k + x[:, 1:], k * k)
    return {
        "nll": float(law.nll(x).mean()),
        "tv_unigram": 0.5 * float((unigram - law.unigram(length)).abs().sum()),
        "tv_bigram": 0.5 * float((bigram - law.bigram(length)).abs().sum()),
        "distinct": torch.unique(x, dim=0).shape[0] / x.shape[0],
    }


class ToyDenoiser(nn.Module):
    """A residual MLP over the whole (flattened one-hot) sequence, conditioned on sigma.

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
        )
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


def _cosine(opt: torch.optim.Optimizer, total: int, warmup: int = 50):
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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = _cosine(opt, steps)
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
    distiller: DCDistiller,
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


def evaluate(
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


class ExactDenoiser(nn.Module):
    """The NELBO-optimal denoiser of the chain, computed exactly by forward-backward.

    For uniform-state diffusion the loss is minimised by x_hat_l = p(x_l | z_t at the other
    positions) (the posterior with the token's own observation left out): the ancestral
    posterior then equals the true reverse process. Ids input only. Useful as a reference: its
    few-step samples show the error of the few-step factorisation itself.
    """

    def __init__(self, law: MarkovChain):
        super().__init__()
        self.law = law

    def forward(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        k = self.law.vocab_size
        b, length = z_t.shape
        alpha = torch.exp(-sigma.to(torch.float64)).view(b, 1, 1)
        # emission q(z_l | x_l = j) for every j: (B, L, K)
        emit = (1 - alpha) / k + alpha * F.one_hot(z_t.cpu(), k).to(torch.float64)
        p = self.law.transition
        fwd = [self.law.initial.expand(b, k)]  # p(x_l, z_<l), normalised, before emission l
        for i in range(1, length):
            v = (fwd[-1] * emit[:, i - 1]) @ p
            fwd.append(v / v.sum(-1, keepdim=True))
        bwd = [torch.ones(b, k, dtype=torch.float64)]  # p(z_>l | x_l), normalised
        for i in range(length - 1, 0, -1):
            v = (emit[:, i] * bwd[0]) @ p.T
            bwd.insert(0, v / v.sum(-1, keepdim=True))
        loo = torch.stack([f * g for f, g in zip(fwd, bwd, strict=True)], 1)
        return torch.log(loo / loo.sum(-1, keepdim=True)).to(torch.float32)
