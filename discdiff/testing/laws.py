"""Exact laws of sampler runs, and the statistics that compare samples with a law.

- ``uniform_chain``: the exact law of the uniform-state sampler run on a ``UniformOracle``, by
  enumerating its K^(free) states (one transition matrix per step).
- ``conditional``: the law of the free positions of an explicit joint law given a prompt.
- ``chi_square_p``, ``total_variation``, ``frequencies``, ``sequence_ids``: samples vs a law.
- ``sample_metrics``: samples vs a ``MarkovChain`` (exact NLL, unigram / bigram TV, diversity).

When exact denoisers give exact samples. One reverse step draws the positions independently
given z_t, so a few-step sample of L >= 2 free positions carries a factorisation error that
vanishes only as the steps grow (O(1 / steps)); with ONE free position (L = 1, or every other
position a prompt) the reverse chain is the exact one at any step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.samplers import TimeGrid, psi_posterior, uniform_posterior
from discdiff.testing.toys import MarkovChain, UniformOracle, all_sequences

__all__ = [
    "Agreement",
    "assert_samples_follow",
    "chi_square_p",
    "conditional",
    "detectable_tv",
    "frequencies",
    "sample_metrics",
    "sequence_ids",
    "total_variation",
    "tv_bound",
    "uniform_chain",
]

F64 = torch.float64


def chi_square_p(samples: Tensor, probs: Tensor, *, groups: bool = False) -> float:
    """p-value of the samples (ids, any shape) against the law ``probs`` (flattened, the ids
    index it); cells of zero mass must be empty. With ``groups=True``, ``probs`` (G, C) and
    ``samples`` (G, n): group g's draws follow ``probs[g]``, one chi-square over all groups (the
    statistics and the degrees of freedom summed).

    Cells expected to hold fewer than 5 draws are pooled (the chi-square approximation needs
    it), the smallest first, until the pool holds 5 or more. Needs scipy (the ``testing`` extra).
    """
    try:
        from scipy import stats  # a dev / testing dependency, not a library one
    except ImportError as err:  # pragma: no cover - scipy is installed with the extra
        raise ImportError("chi_square_p needs scipy: pip install 'discdiff[testing]'") from err
    if groups:
        if probs.ndim != 2 or samples.ndim != 2 or samples.shape[0] != probs.shape[0]:
            raise ValueError(f"groups=True needs probs (G, C) and samples (G, n), got probs "
                             f"{tuple(probs.shape)}, samples {tuple(samples.shape)}")  # fmt: skip
        parts = [_pearson(s, p) for s, p in zip(samples, probs, strict=True)]
    else:
        parts = [_pearson(samples, probs)]
    stat, dof = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return 1.0 if dof == 0 else float(stats.chi2.sf(stat, dof))


def _pearson(samples: Tensor, probs: Tensor) -> tuple[float, int]:
    """Pearson's statistic of the samples against ``probs`` after pooling, and its degrees of
    freedom."""
    probs = probs.to(F64).flatten()
    counts = torch.bincount(samples.flatten(), minlength=probs.numel()).to(F64)
    if counts.numel() != probs.numel():
        raise ValueError(f"samples hold the id {counts.numel() - 1}, outside the law's support "
                         f"of {probs.numel()} cells: pass probs over every id drawn")  # fmt: skip
    support = probs > 0
    if counts[~support].sum() != 0:
        raise ValueError("samples drew a class of probability zero under probs")
    expected = probs[support] / probs[support].sum() * counts.sum()
    observed = counts[support]
    order = expected.argsort()
    expected, observed = expected[order], observed[order]
    pooled = 0
    while pooled < expected.numel() - 1 and expected[: pooled + 1].sum() < 5:
        pooled += 1
    if pooled:
        expected = torch.cat([expected[:pooled].sum(0, keepdim=True), expected[pooled:]])
        observed = torch.cat([observed[:pooled].sum(0, keepdim=True), observed[pooled:]])
    stat = float(((observed - expected) ** 2 / expected).sum())
    return stat, expected.numel() - 1


def total_variation(p: Tensor, q: Tensor) -> float:
    """1/2 sum |p - q| of two laws of the same size (flattened), in float64."""
    return 0.5 * float((p.to(F64).flatten() - q.to(F64).flatten()).abs().sum())


def frequencies(ids: Tensor, size: int) -> Tensor:
    """The empirical law (size,) float64 of the ids (any shape)."""
    return torch.bincount(ids.flatten(), minlength=size).to(F64) / ids.numel()


def sequence_ids(x: Tensor, k: int) -> Tensor:
    """Each row of x (n, L) as one id in [0, K^L), first position most significant (the order
    of ``all_sequences``)."""
    powers = k ** torch.arange(x.shape[1] - 1, -1, -1)
    return (x * powers).sum(-1)


def conditional(law: Tensor, prompt: Tensor, mask: Tensor) -> Tensor:
    """The law of the free positions of ``law`` (K,) * L given the prompt's values (L,) where
    ``mask`` (L,) is True, flattened over K^(free)."""
    index = tuple(int(prompt[m]) if mask[m] else slice(None) for m in range(law.ndim))
    rest = law[index]
    return (rest / rest.sum()).flatten()


def _step_posterior(oracle: UniformOracle, z: Tensor, clean: Tensor | None, a_t: Tensor,
                    a_s: Tensor, kappa: float | None, renoise: str) -> Tensor:  # fmt: skip
    """The per-position law of z_s given every state z (S, L): (S, L, K)."""
    x_hat = oracle.probs(z, a_t, clean)
    if kappa is None:
        return uniform_posterior(x_hat, z, a_s, a_t)
    if renoise == "posterior":
        return psi_posterior(x_hat, z, a_s, a_t, kappa)
    post = kappa * uniform_posterior(x_hat, z, a_s, a_t)
    return post + (1 - kappa) * (a_s * x_hat + (1 - a_s) / oracle.k)


def uniform_chain(
    oracle: UniformOracle,
    grid: TimeGrid,
    *,
    prompt: Tensor | None = None,
    mask: Tensor | None = None,
    kappa: float | None = None,
    renoise: str = "posterior",
    told: bool = True,
) -> Tensor:
    """The exact law of the uniform sampler (no tail) over the free positions' K^(free) states,
    float64 (K^(free),) in ``sequence_ids`` order.

    z_1 is uniform on the free positions (``mask`` (L,) True at the ``prompt`` (L,)'s given
    positions), then one transition matrix per step of ``grid`` from the explicit posteriors.
    ``kappa``: the Ψ sampler; ``renoise="x_hat"`` is the older Ψ form kappa post + (1 - kappa)
    (alpha_s x_hat + (1 - alpha_s) / K), kept to measure how much worse it is. ``told=False``:
    the denoiser is not told which positions are clean (the clamped approximation).
    """
    if renoise not in ("posterior", "x_hat"):
        raise ValueError(f"renoise={renoise!r}: choose 'posterior' or 'x_hat'")
    k, length = oracle.k, oracle.length
    if mask is None:
        prompt = torch.zeros(length, dtype=torch.long)
        mask = torch.zeros(length, dtype=torch.bool)
    elif prompt is None:
        raise ValueError("mask is given without prompt: pass the prompt's values (L,) too")
    free = (~mask).nonzero().squeeze(-1)
    states = all_sequences(k, len(free))  # (S, F)
    z = prompt.expand(len(states), length).clone()
    z[:, free] = states
    clean = mask.expand(len(states), length) if told else None
    law = torch.full((len(states),), 1.0 / len(states), dtype=F64)
    for i in range(grid.steps):
        post = _step_posterior(oracle, z, clean, grid.alpha[i], grid.alpha[i + 1], kappa, renoise)
        step = torch.ones(len(states), len(states), dtype=F64)
        for j, pos in enumerate(free.tolist()):
            step = step * post[:, pos, :][:, states[:, j]]  # factorised over positions
        law = law @ step
    return law


def _counts(values: Tensor, size: int) -> Tensor:
    c = torch.bincount(values.reshape(-1).cpu(), minlength=size).to(F64)
    return c / c.sum()


def sample_metrics(x: Tensor, law: MarkovChain) -> dict[str, float]:
    """Exact mean NLL (nats per sequence) of samples x (n, L) under ``law``, total variation of
    their unigram and bigram frequencies from the law's, and the fraction of distinct samples:
    keys ``nll``, ``tv_unigram``, ``tv_bigram``, ``distinct``."""
    k, length = law.vocab_size, x.shape[1]
    unigram = _counts(x, k)
    bigram = _counts(x[:, :-1] * k + x[:, 1:], k * k)
    return {
        "nll": float(law.nll(x).mean()),
        "tv_unigram": 0.5 * float((unigram - law.unigram(length)).abs().sum()),
        "tv_bigram": 0.5 * float((bigram - law.bigram(length)).abs().sum()),
        "distinct": torch.unique(x, dim=0).shape[0] / x.shape[0],
    }


@dataclass(frozen=True)
class Agreement:
    """What ``assert_samples_follow`` measured: ``n`` draws, the chi-square ``p_value``, the
    empirical ``tv`` from the law and the ``tv_bound`` it had to stay under, ``alpha``, and
    ``detectable``: the TV at which any alternative law is rejected with probability ``power``
    (``detectable_tv``)."""

    n: int
    p_value: float
    tv: float
    tv_bound: float
    alpha: float
    power: float
    detectable: float


def tv_bound(probs: Tensor, n: int, alpha: float) -> float:
    """A bound the empirical TV of n exact draws from ``probs`` exceeds with probability at most
    ``alpha``, from no approximation: E TV <= 1/2 sum_i sqrt(p_i (1 - p_i) / n) (Jensen), and one
    draw moves the TV by at most 1/n, so P(TV >= E TV + e) <= exp(-2 n e^2) (McDiarmid)."""
    p = probs.to(F64).flatten()
    mean = 0.5 * float(torch.sqrt(p * (1 - p) / n).sum())
    return mean + math.sqrt(math.log(1 / alpha) / (2 * n))


def detectable_tv(probs: Tensor, n: int, alpha: float, power: float = 0.99) -> float:
    """The TV from ``probs`` beyond which the chi-square test of n draws at level ``alpha``
    rejects every alternative law with probability >= ``power``.

    A law q at TV d from p has noncentrality lambda = n sum (q - p)^2 / p >= 4 n d^2
    (Cauchy-Schwarz: (sum |q - p|)^2 <= sum (q - p)^2 / p), so the power is at least that of the
    noncentral chi-square with S - 1 degrees of freedom at 4 n d^2 (the asymptotic law of the
    statistic, for S cells each expected to hold >= 5 draws). Needs scipy.
    """
    from scipy import optimize, stats

    df = max(int((probs.flatten() > 0).sum()) - 1, 1)
    crit = stats.chi2.isf(alpha, df)

    def short(lam: float) -> float:
        return float(stats.ncx2.sf(crit, df, lam)) - power

    lam = optimize.brentq(short, 1e-9, 1e7)
    return math.sqrt(lam / (4 * n))


def assert_samples_follow(
    samples: Tensor,
    law: Tensor,
    *,
    alpha: float = 1e-4,
    power: float = 0.99,
    what: str = "samples",
) -> Agreement:
    """Raise AssertionError unless the ids ``samples`` (any shape; each indexes ``law``) pass
    both tests at level ``alpha`` each: the chi-square test (``chi_square_p``) and the exact-TV
    bound (``tv_bound``, no approximation). The message says which failed, by how much, and the
    TV the test detects with probability ``power`` (``detectable_tv``); ``what`` names the
    samples. Returns the ``Agreement``. Needs scipy.
    """
    law = law.to(F64).flatten()
    n = samples.numel()
    if n == 0:
        raise ValueError("samples is empty: draw some samples first")
    if bool((samples < 0).any()) or int(samples.max()) >= law.numel():
        raise AssertionError(f"{what}: ids outside the law's {law.numel()} cells (min "
                             f"{int(samples.min())}, max {int(samples.max())})")  # fmt: skip
    freq = frequencies(samples.cpu(), law.numel())
    outside = float(freq[law <= 0].sum())
    if outside > 0:
        raise AssertionError(f"{what}: {outside:.2%} of the draws fall where the law has mass 0")
    found = Agreement(n, chi_square_p(samples.cpu(), law), total_variation(freq, law),
                      tv_bound(law, n, alpha), alpha, power,
                      detectable_tv(law, n, alpha, power))  # fmt: skip
    worst = int((freq - law).abs().argmax())
    where = (f"the worst cell {worst}: frequency {float(freq[worst]):.4f}, law "
             f"{float(law[worst]):.4f}; n = {n}; the test detects TV >= {found.detectable:.4f} "
             f"with probability {power}")  # fmt: skip
    if found.p_value < alpha:
        raise AssertionError(f"{what} do not follow the law: chi-square p = "
                             f"{found.p_value:.3g} < alpha = {alpha:g} (empirical TV "
                             f"{found.tv:.4f}); {where}")  # fmt: skip
    if found.tv > found.tv_bound:
        raise AssertionError(f"{what} do not follow the law: empirical TV {found.tv:.4f} exceeds "
                             f"the exact bound {found.tv_bound:.4f} at alpha = {alpha:g} by "
                             f"{found.tv - found.tv_bound:.4f}; {where}")  # fmt: skip
    return found
