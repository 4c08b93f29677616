"""Toy laws whose truth is known, and their exact (NELBO-optimal) denoisers.

Two kinds of law:

- ``MarkovChain``: a chain over short sequences with exact likelihood, entropy, unigram and
  bigram laws and exact samples; ``ExactDenoiser`` (uniform-state) and ``ExactMaskedDenoiser``
  (masked) are its optimal denoisers, by forward-backward.
- an explicit joint law over K^L sequences, a (K,) * L float64 tensor (``random_law``);
  ``UniformOracle`` and ``MaskedOracle`` are its optimal denoisers, by enumeration.

What "exact denoiser" means. The plug-in posterior q(z_s | z_t, x_hat) ∝ q(z_t | z_s) q(z_s |
x_hat) uses x_hat only through q_t(. | x_hat) = alpha_t x_hat + (1 - alpha_t) / K, and the true
reverse process needs the ratios p_t(z with position l set to j) / p_t(z). Those are matched by
the leave-one-out law x_hat^l = p(x^l | z_t^{-l}) (Concepts §5): the clean token at l given the
*other* positions. The same law is the exact masked denoiser at masked positions (unmasked
positions are clean evidence). A prompt is clean context: its positions enter the likelihood
with alpha = 1.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ExactDenoiser",
    "ExactMaskedDenoiser",
    "MarkovChain",
    "MaskedOracle",
    "UniformOracle",
    "all_sequences",
    "random_law",
]

F64 = torch.float64


@dataclass(frozen=True)
class MarkovChain:
    """x_1 ~ initial, x_{l+1} | x_l ~ transition[x_l]; both float64.

    ``initial`` is (K,), ``transition`` (K, K) with rows summing to one.
    """

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
        if vocab_size <= len(successors):
            raise ValueError(
                f"vocab_size={vocab_size} must exceed len(successors)={len(successors)}: the "
                "rest of the mass needs other states"
            )
        if sum(successors) >= 1.0:
            raise ValueError(f"successors={successors} must sum to less than 1")
        g = torch.Generator().manual_seed(seed)
        k, n = vocab_size, len(successors)
        rest = (1.0 - sum(successors)) / (k - n)
        transition = torch.full((k, k), rest, dtype=F64)
        for i in range(k):
            chosen = torch.randperm(k, generator=g)[:n]
            transition[i, chosen] = torch.tensor(successors, dtype=F64)
        initial = torch.full((k,), 1.0 / k, dtype=F64)
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
        """-log p(x) per sequence (n,) of x (n, L), exact, in nats."""
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


def _leave_one_out(law: MarkovChain, emit: Tensor) -> Tensor:
    """p(x_l | z^{-l}) for every l, (B, L, K) float64, from the emissions q(z_l | x_l = j)
    (B, L, K) by forward-backward; each message is normalised (only ratios matter)."""
    b, length, k = emit.shape
    p = law.transition
    fwd = [law.initial.expand(b, k)]  # p(x_l, z_<l), normalised, before emission l
    for i in range(1, length):
        v = (fwd[-1] * emit[:, i - 1]) @ p
        fwd.append(v / v.sum(-1, keepdim=True))
    bwd = [torch.ones(b, k, dtype=F64)]  # p(z_>l | x_l), normalised
    for i in range(length - 1, 0, -1):
        v = (emit[:, i] * bwd[0]) @ p.T
        bwd.insert(0, v / v.sum(-1, keepdim=True))
    loo = torch.stack([f * g for f, g in zip(fwd, bwd, strict=True)], 1)
    return loo / loo.sum(-1, keepdim=True)


class ExactDenoiser(nn.Module):
    """The NELBO-optimal uniform-state denoiser of a ``MarkovChain``, by forward-backward.

    For uniform-state diffusion the loss is minimised by x_hat_l = p(x_l | z_t at the other
    positions) (the posterior with the token's own observation left out): the ancestral
    posterior then equals the true reverse process. Takes ids z_t (B, L) and sigma (B,);
    returns float32 log-probabilities (B, L, K). Its few-step samples show the error of the
    few-step factorisation itself.
    """

    def __init__(self, law: MarkovChain):
        super().__init__()
        self.law = law

    def forward(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        k = self.law.vocab_size
        b = z_t.shape[0]
        alpha = torch.exp(-sigma.to(F64)).view(b, 1, 1)
        # emission q(z_l | x_l = j) for every j: (B, L, K)
        emit = (1 - alpha) / k + alpha * F.one_hot(z_t.cpu(), k).to(F64)
        return torch.log(_leave_one_out(self.law, emit)).to(torch.float32)


class ExactMaskedDenoiser(nn.Module):
    """The NELBO-optimal masked (MDLM) denoiser of a ``MarkovChain``, by forward-backward.

    For masked diffusion the loss is minimised by x_hat_l = p(x_l | the unmasked tokens of z_t),
    whatever t (so it needs no time conditioning). Computed for every position with the token's
    own observation left out (at a masked position that is the same law; at an unmasked one SUBS
    ignores it). Takes ids z_t (B, L) with the mask id K; returns float32 logits (B, L, K + 1),
    the mask logit -inf.
    """

    def __init__(self, law: MarkovChain):
        super().__init__()
        self.law = law

    def forward(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        k = self.law.vocab_size
        b, length = z_t.shape
        z = z_t.cpu()
        # emission p(z_l | x_l = j): 1 for a mask, [j = z_l] for a kept token
        emit = F.one_hot(z.clamp(max=k - 1), k).to(F64)
        emit[z == k] = 1.0
        logits = torch.log(_leave_one_out(self.law, emit))
        mask = torch.full((b, length, 1), -torch.inf, dtype=logits.dtype)
        return torch.cat([logits, mask], -1).to(device=z_t.device, dtype=torch.float32)


def all_sequences(k: int, length: int) -> Tensor:
    """Every sequence of K^L, int64 (K^L, L), first position most significant (the order of
    ``discdiff.testing.sequence_ids``)."""
    return torch.tensor(list(itertools.product(range(k), repeat=length)))


def random_law(k: int, length: int, seed: int) -> Tensor:
    """A dependent law of full support over K^L, as a float64 (K,) * L tensor."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.rand((k,) * length, generator=generator, dtype=F64) ** 3 + 0.01
    return w / w.sum()


class UniformOracle:
    """The NELBO-optimal uniform-state denoiser of an explicit joint law (K,) * L, by enumeration.

    x_hat^l = p(x^l | z_t^{-l}) with the likelihood q(z^m | x^m) = alpha_t [z^m = x^m] +
    (1 - alpha_t) / K, and [z^m = x^m] at the clean positions (a prompt): those where the
    sampler's per-token levels sigma (B, L) are 0 (``reads_token_levels``). Called as
    ``oracle(z_t (B, L), sigma (B,) or (B, L))``, returns float64 log-probabilities (B, L, K);
    ``calls`` counts the calls.
    """

    reads_token_levels = True

    def __init__(self, law: Tensor):
        self.law, self.k, self.length = law, law.shape[0], law.ndim
        self.sequences = all_sequences(self.k, self.length)  # (S, L)
        self.onehot = F.one_hot(self.sequences, self.k).to(F64)  # (S, L, K)
        self.calls = 0

    def likelihood(self, z: Tensor, alpha_t: Tensor, clean: Tensor | None) -> Tensor:
        """q(z^m | x^m) for every sequence x: (B, S, L)."""
        same = (z[:, None, :] == self.sequences[None]).to(F64)
        like = alpha_t.view(-1, 1, 1) * same + (1 - alpha_t.view(-1, 1, 1)) / self.k
        return like if clean is None else torch.where(clean[:, None, :], same, like)

    def probs(self, z: Tensor, alpha_t: float | Tensor, clean: Tensor | None = None) -> Tensor:
        """x_hat (B, L, K), float64, of z (B, L) at signal level ``alpha_t`` (a float or (B,));
        ``clean`` (B, L) marks the prompt's positions."""
        alpha_t = torch.as_tensor(alpha_t, dtype=F64).expand(z.shape[0])
        like = self.likelihood(z, alpha_t, clean)
        rows = []
        for pos in range(self.length):
            others = [m for m in range(self.length) if m != pos]
            weight = self.law.reshape(1, -1) * like[..., others].prod(-1)  # (B, S)
            rows.append(weight @ self.onehot[:, pos])
        x_hat = torch.stack(rows, 1)
        return x_hat / x_hat.sum(-1, keepdim=True)

    def __call__(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        clean = None
        if sigma.ndim == 2:  # per-token levels: 0 at clean context, one level elsewhere
            clean, sigma = sigma == 0, sigma.amax(-1)
        return self.table(z_t, torch.exp(-sigma.to(F64)), clean).log()

    def table(self, z: Tensor, alpha_t: Tensor, clean: Tensor | None) -> Tensor:
        """``probs`` computed once per distinct row (a batch holds at most K^L of them)."""
        if not bool((alpha_t == alpha_t[0]).all()):
            return self.probs(z, alpha_t, clean)
        base = self.k + 1  # ids and the mask id K
        code = (z * base ** torch.arange(z.shape[1])).sum(-1)
        if clean is not None:
            code = code * 2 ** z.shape[1] + (clean.long() * 2 ** torch.arange(z.shape[1])).sum(-1)
        codes, inverse = torch.unique(code, return_inverse=True)
        first = torch.zeros(len(codes), dtype=torch.long).scatter_(0, inverse, torch.arange(len(z)))
        distinct_clean = None if clean is None else clean[first]
        return self.probs(z[first], alpha_t[0], distinct_clean)[inverse]


class MaskedOracle(UniformOracle):
    """The exact masked denoiser of a law over K real tokens (the mask is id K), by enumeration:
    x_hat^l = p(x^l | the unmasked positions of z_t^{-l}). Returns float64 logits (B, L, K + 1);
    the mask class gets a large finite logit, which SUBS must ignore."""

    MASK_LOGIT = 5.0

    def likelihood(self, z: Tensor, alpha_t: Tensor, clean: Tensor | None) -> Tensor:
        same = (z[:, None, :] == self.sequences[None]).to(F64)
        return torch.where(z[:, None, :] == self.k, 1.0, same)

    def __call__(self, z_t: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        logits = self.table(z_t, torch.ones(z_t.shape[0], dtype=F64), None).log()
        return torch.cat([logits, torch.full((*z_t.shape, 1), self.MASK_LOGIT, dtype=F64)], -1)
