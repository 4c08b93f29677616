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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ClassOracle",
    "ExactDenoiser",
    "ExactMaskedDenoiser",
    "MarkovChain",
    "MaskedOracle",
    "Toy",
    "UniformOracle",
    "all_sequences",
    "markov_joint",
    "posterior_denoiser",
    "posterior_logits",
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


def markov_joint(chain: MarkovChain, length: int) -> Tensor:
    """The joint law (K,) * L float64 of ``length`` tokens of a ``MarkovChain``, explicit."""
    joint = chain.initial.to(F64)
    k = chain.vocab_size
    for _ in range(length - 1):
        joint = joint.unsqueeze(-1) * chain.transition.to(F64).reshape((1,) * (joint.ndim - 1)
                                                                       + (k, k))  # fmt: skip
    return joint


def _check_law(law: Tensor, name: str) -> Tensor:
    if not isinstance(law, Tensor) or law.ndim < 1:
        raise ValueError(f"{name} must be a tensor (K,) * L of probabilities, got {law!r:.60}")
    law = law.to(F64)
    if len(set(law.shape)) != 1:
        raise ValueError(f"{name} must have one size K on every axis, got {tuple(law.shape)}")
    if law.shape[0] > 8 or law.ndim > 6:
        raise ValueError(f"{name} has K = {law.shape[0]}, L = {law.ndim}: a toy keeps K <= 8, "
                         "L <= 6 so that every law is enumerable")  # fmt: skip
    if bool((law < 0).any()) or abs(float(law.sum()) - 1) > 1e-9:
        raise ValueError(f"{name} must hold probabilities summing to one, sum = {float(law.sum())}")
    return law


@dataclass(frozen=True, eq=False)
class Toy:
    """A class-conditional law small enough to enumerate, with its exact denoisers.

    ``laws`` (C, K, ..., K) float64: p(x | y) for the C classes y (C = 1: an unconditional law);
    ``prior`` (C,): p(y). The denoisers (``denoiser``) take the label as ``label`` (B,) int
    conditioning, ``C`` (``null_label``) or no label meaning "no condition": they then answer
    with the marginal law sum_y p(y) p(x | y), the exact unconditional denoiser that guidance
    needs. K <= 8, L <= 6: every law is enumerable.
    """

    laws: Tensor
    prior: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.laws, Tensor) or self.laws.ndim < 2:
            raise ValueError("laws must be (C, K, ..., K): one law per class (Toy.of for one law)")
        laws = torch.stack([_check_law(law, f"laws[{c}]") for c, law in enumerate(self.laws)])
        prior = torch.as_tensor(self.prior, dtype=F64)
        if prior.shape != (laws.shape[0],) or abs(float(prior.sum()) - 1) > 1e-9:
            raise ValueError(f"prior must be ({laws.shape[0]},) probabilities summing to one")
        object.__setattr__(self, "laws", laws)
        object.__setattr__(self, "prior", prior)

    @staticmethod
    def of(law: Tensor) -> Toy:
        """The toy of one (unconditional) law (K,) * L."""
        return Toy(_check_law(law, "law").unsqueeze(0), torch.ones(1, dtype=F64))

    @staticmethod
    def random(k: int, length: int, *, classes: int = 1, seed: int = 0) -> Toy:
        """``classes`` dependent laws of full support over K^L (``random_law``), uniform prior."""
        laws = torch.stack([random_law(k, length, seed + 1000 * c) for c in range(classes)])
        return Toy(laws, torch.full((classes,), 1.0 / classes, dtype=F64))

    @property
    def vocab_size(self) -> int:
        return self.laws.shape[1]

    @property
    def length(self) -> int:
        return self.laws.ndim - 1

    @property
    def classes(self) -> int:
        return self.laws.shape[0]

    @property
    def null_label(self) -> int:
        """The label meaning "no condition" (the unconditional prediction of guidance)."""
        return self.classes

    def law(self, label: int | None = None) -> Tensor:
        """p(x | y = label) (K,) * L, or the marginal law for None / ``null_label``."""
        if label is None or label == self.null_label:
            return torch.einsum("c,c...->...", self.prior, self.laws)
        return self.laws[label]

    def denoiser(self, process: str = "uniform", parameterization: str = "x_hat") -> ClassOracle:
        """The exact denoiser of the ``process`` ("uniform" or "masked", mask id K) returning
        x_hat logits, or the posterior p(x^l | z_t) (SPEC §11) for ``parameterization=
        "posterior"``."""
        if process not in ("uniform", "masked"):
            raise ValueError(f"process={process!r}: choose 'uniform' or 'masked'")
        if parameterization not in ("x_hat", "posterior"):
            raise ValueError(f"parameterization={parameterization!r}: choose 'x_hat' or "
                             "'posterior'")  # fmt: skip
        return ClassOracle(self, process, parameterization)


class ClassOracle:
    """The exact denoiser of a ``Toy``: ``oracle(z_t (B, L), sigma (B,) or (B, L), label=None)``
    -> float64 logits (B, L, K), (B, L, K + 1) for the masked process (mask id K).

    Each row is answered by the enumerated oracle of its class's law (``UniformOracle`` /
    ``MaskedOracle``), the marginal law for the null label or no label; ``label`` is (B,) or
    one int for every row. Reads per-token levels
    (0 at clean context). ``calls`` counts the calls.
    """

    reads_token_levels = True

    def __init__(self, toy: Toy, process: str, parameterization: str):
        self.toy, self.process, self.parameterization = toy, process, parameterization
        kind = MaskedOracle if process == "masked" else UniformOracle
        self.oracles = [kind(toy.law(y)) for y in range(toy.classes + 1)]
        self.calls = 0

    def __call__(self, z_t: Tensor, sigma: Tensor, label: Tensor | None = None) -> Tensor:
        self.calls += 1
        b = z_t.shape[0]
        null = self.toy.null_label
        labels = torch.full((b,), null) if label is None else torch.as_tensor(label).reshape(-1)
        if labels.numel() == 1:  # one label for every row
            labels = labels.expand(b)
        if labels.shape != (b,) or bool(((labels < 0) | (labels > null)).any()):
            raise ValueError(f"label must be (B,) = ({b},) ints in [0, {null}] ({null}: no "
                             f"condition), got {label!r:.60}")  # fmt: skip
        out = None
        for y in labels.unique().tolist():
            rows = labels == y
            logits = self.oracles[y](z_t[rows], sigma[rows])
            out = logits.new_empty(b, *logits.shape[1:]) if out is None else out
            out[rows] = logits
        assert out is not None
        if self.parameterization == "posterior":
            return posterior_logits(out, z_t, sigma, self.toy.vocab_size)
        return out


def posterior_logits(logits: Tensor, z_t: Tensor, sigma: Tensor, vocab_size: int) -> Tensor:
    """x_hat logits (B, L, K') -> the posterior p(x^l | z_t) (SPEC §11), as log-probabilities.

    Uniform process (K' = K): posterior ∝ x_hat (1 + [j = z_t] K alpha / (1 - alpha)), alpha =
    exp(-sigma) per row (B,) or per token (B, L); at alpha = 1 (clean context) the point mass
    at z_t. Masked process (K' = K + 1, mask id K): x_hat itself at a masked position (a mask
    carries no evidence), the point mass at an unmasked one.
    """
    b, length, k_out = logits.shape
    log_p = torch.log_softmax(logits.to(F64), -1)
    at_z = F.one_hot(z_t.clamp(max=k_out - 1), k_out).bool()
    if k_out == vocab_size + 1:  # masked: a kept token is clean evidence
        clean = (z_t != vocab_size).unsqueeze(-1).expand_as(at_z)
        return torch.where(clean, torch.where(at_z, 0.0, -torch.inf), log_p)
    alpha = torch.exp(-sigma.to(F64))
    alpha = alpha.view(b, 1, 1) if alpha.ndim == 1 else alpha.unsqueeze(-1)
    shift = torch.log1p(vocab_size * alpha / (1 - alpha).clamp_min(torch.finfo(F64).tiny))
    point = torch.where(at_z, 0.0, -torch.inf)
    shifted = torch.log_softmax(log_p + torch.where(at_z, shift, 0.0), -1)
    return torch.where(alpha >= 1, point, shifted)


def posterior_denoiser(denoiser: Callable[..., Tensor], vocab_size: int) -> Callable[..., Tensor]:
    """A denoiser whose logits are the posterior p(x^l | z_t) of ``denoiser``'s x_hat (SPEC §11):
    what a model trained with cross-entropy on x from z_t outputs. ``vocab_size`` is the number
    of real tokens K (the masked process's mask id is K). Keeps ``reads_token_levels``."""

    def posterior(z_t: Tensor, sigma: Tensor, **cond: object) -> Tensor:
        return posterior_logits(denoiser(z_t, sigma, **cond), z_t, sigma, vocab_size)

    posterior.reads_token_levels = getattr(denoiser, "reads_token_levels", False)  # type: ignore[attr-defined]
    return posterior
