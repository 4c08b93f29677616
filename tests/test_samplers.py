"""Samplers: the posterior is Bayes' rule, every draw has the intended law (chi-square against
the exact float64 law), Ψ with kappa = 1 is ancestral, the cache changes nothing, sampling with
an exact denoiser reproduces a toy data law, and bad input fails loudly.

A note on "exact denoisers" for the uniform process. The plug-in posterior
q(z_s | z_t, x_hat) ∝ q(z_t | z_s) q(z_s | x_hat) only uses x_hat through
q_t(. | x_hat) = alpha_t x_hat + (1 - alpha_t) / K, and the true reverse process needs the ratios
p_t(z with position l set to j) / p_t(z). Those are matched by x_hat^l = p(x_0^l | z_t^{-l}),
the clean token at l given the *other* positions: for one position, x_hat = the data law itself.
Plugging in the Bayes posterior p(x_0 | z_t) instead (which also looks at z_t^l) is not exact,
not even with many steps (total variation 0.13 at 512 steps for a 3-token law). The same
x_hat^l = p(x_0^l | z_t^{-l}) is the exact masked denoiser at masked positions.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import discdiff.samplers as samplers
from discdiff.samplers import (
    CappedKappa,
    CappedRemask,
    ConstantKappa,
    RescaledRemask,
    masked_ancestral_step,
    sample_categorical,
    sample_categorical_logits,
    sample_masked,
    sample_uniform,
    uniform_ancestral_step,
    uniform_posterior,
)
from discdiff.schedules import LogLinearSchedule

F64 = torch.float64
SCHEDULE = LogLinearSchedule()
P_MIN = 1e-4  # chi-square p-value below which a law is rejected (all draws are seeded)


def chi_square_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of the samples (ids) against the law ``probs`` (cells of zero mass must be empty)."""
    probs = probs.to(F64)
    counts = torch.bincount(samples.flatten(), minlength=probs.numel()).to(F64)
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a class of probability zero"
    expected = probs[support] / probs[support].sum() * counts.sum()
    if support.sum() < 2:
        return 1.0
    return float(stats.chisquare(counts[support].numpy(), expected.numpy()).pvalue)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def alpha(t: float) -> float:
    return 1.0 if t == 0 else float(SCHEDULE.alpha(torch.tensor(t, dtype=F64)))


# ---------------------------------------------------------------------------------------------
# The posterior
# ---------------------------------------------------------------------------------------------


@given(
    k=st.integers(2, 6),
    a_t=st.floats(0.0, 1.0),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_posterior_is_bayes_rule_with_explicit_matrices(k, a_t, frac, seed):
    a_s = a_t + frac * (1 - a_t)
    g = gen(seed)
    probs = torch.rand(1, k, k, generator=g, dtype=F64) + 1e-3
    probs = probs / probs.sum(-1, keepdim=True)
    z_t = torch.arange(k).unsqueeze(0)  # position i holds z_t = i
    a_ts = a_t / a_s if a_s > 0 else 1.0
    eye, ones = torch.eye(k, dtype=F64), torch.ones(k, k, dtype=F64)
    forward_ts = a_ts * eye + (1 - a_ts) / k * ones  # [z_s, z_t]
    for i in range(k):
        prior_s = a_s * probs[0, i] + (1 - a_s) / k  # q(z_s | x_hat)
        joint = forward_ts[:, i] * prior_s
        if joint.sum() == 0:
            continue
        expected = joint / joint.sum()
        got = uniform_posterior(probs, z_t, a_s, a_t)[0, i]
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@given(k=st.integers(2, 50), a_t=st.floats(0.0, 0.999), frac=st.floats(0.0, 1.0))
def test_posterior_rows_sum_to_one_in_the_input_dtype(k, a_t, frac):
    a_s = a_t + frac * (1 - a_t)
    for dtype, tol in ((torch.float32, 1e-5), (F64, 1e-12)):
        probs = torch.softmax(torch.randn(2, 3, k, generator=gen(k), dtype=dtype), -1)
        z_t = torch.randint(0, k, (2, 3), generator=gen(k + 1))
        post = uniform_posterior(probs, z_t, a_s, a_t)
        assert post.dtype == dtype
        assert bool((post >= 0).all())
        torch.testing.assert_close(post.sum(-1), torch.ones(2, 3, dtype=dtype), rtol=0, atol=tol)


def test_posterior_takes_per_sequence_and_per_token_levels():
    probs = torch.softmax(torch.randn(2, 3, 5, dtype=F64), -1)
    z_t = torch.randint(0, 5, (2, 3))
    a_t = torch.tensor([[0.2], [0.5]], dtype=F64)
    a_s = torch.tensor([[0.4], [0.9]], dtype=F64)
    post = uniform_posterior(probs, z_t, a_s, a_t)
    for b in range(2):
        row = uniform_posterior(probs[b : b + 1], z_t[b : b + 1], float(a_s[b]), float(a_t[b]))
        torch.testing.assert_close(post[b : b + 1], row)
    per_token = uniform_posterior(probs, z_t, a_s.expand(2, 3), a_t.expand(2, 3))
    torch.testing.assert_close(per_token, post)


def test_posterior_end_points():
    probs = torch.softmax(torch.randn(1, 4, 6, dtype=F64), -1)
    z_t = torch.randint(0, 6, (1, 4))
    # no time elapses: stay at z_t
    same = uniform_posterior(probs, z_t, 0.3, 0.3)
    torch.testing.assert_close(same, torch.nn.functional.one_hot(z_t, 6).to(F64))
    # pure noise to clean: the posterior is x_hat
    torch.testing.assert_close(uniform_posterior(probs, z_t, 1.0, 0.0), probs)


# ---------------------------------------------------------------------------------------------
# Exact categorical sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs",
    [
        [0.5, 0.2, 0.15, 0.1, 0.05],
        [0.97, 0.01, 0.01, 0.005, 0.005],
        [0.0, 0.3, 0.0, 0.7],
        [1e-3] * 7 + [1 - 7e-3],
    ],
)
def test_sample_categorical_chi_square(probs):
    p = torch.tensor(probs)
    x = sample_categorical(p.expand(20000, -1), generator=gen(1))
    assert x.shape == (20000,) and x.dtype == torch.long
    assert chi_square_p(x, p) > P_MIN
    y = sample_categorical_logits(p.log().expand(4, 5000, -1), generator=gen(2))
    assert y.shape == (4, 5000)
    assert chi_square_p(y, p) > P_MIN


def test_sample_categorical_across_blocks_and_unnormalised_rows():
    # K = 300 spans several blocks; rows are unnormalised and differ from each other.
    k = 300
    w = torch.rand(k, generator=gen(3), dtype=F64) ** 4
    rows = torch.stack([w, 5 * w])
    x = sample_categorical(rows.repeat(10000, 1), generator=gen(4))
    assert chi_square_p(x, w) > P_MIN


def test_exact_tail_at_gpt2_vocabulary():
    """A peaked law at K = 50257: the top class 0.95, 256 classes sharing 0.04, and the other
    50000 sharing 0.01 (2e-7 each): the three group frequencies match the float64 law. A float32
    Gumbel-max draws the 2e-7 tail about 25 % too rarely (see benchmarks/bench_samplers.py)."""
    k = 50257
    logits = torch.empty(k, dtype=F64)
    logits[0] = math.log(0.95)
    logits[1:257] = math.log(0.04 / 256)
    logits[257:] = math.log(0.01 / (k - 257))
    n = 16384
    x = sample_categorical_logits(logits.float().expand(n, -1), generator=gen(5))
    p64 = torch.softmax(logits, -1)
    groups = torch.tensor([p64[0], p64[1:257].sum(), p64[257:].sum()])
    observed = torch.stack([(x == 0).sum(), ((x >= 1) & (x < 257)).sum(), (x >= 257).sum()])
    pvalue = stats.chisquare(observed.numpy(), (groups * n).numpy()).pvalue
    assert pvalue > P_MIN, observed
    # and the far tail alone is inside its binomial bounds (4.5 sd)
    mean, sd = n * float(groups[2]), math.sqrt(n * float(groups[2]) * (1 - float(groups[2])))
    assert abs(float(observed[2]) - mean) < 4.5 * sd


@given(k=st.integers(2, 40), seed=st.integers(0, 2**16), zero_frac=st.floats(0.0, 0.9))
def test_sample_categorical_never_draws_a_zero_probability_class(k, seed, zero_frac):
    g = gen(seed)
    p = torch.rand(64, k, generator=g)
    p = p * (torch.rand(64, k, generator=g) >= zero_frac)
    p[:, seed % k] += 0.1  # every row keeps some mass
    x = sample_categorical(p, generator=g)
    assert bool((p.gather(1, x.unsqueeze(-1)) > 0).all())
    y = sample_categorical_logits(p.log(), generator=g)
    assert bool((p.gather(1, y.unsqueeze(-1)) > 0).all())


def test_draws_do_not_depend_on_the_chunk_size(monkeypatch):
    logits = torch.randn(3, 37, 1000, generator=gen(6))
    z_t = torch.randint(0, 1000, (3, 37), generator=gen(7))
    a = sample_categorical_logits(logits, top_p=0.8, generator=gen(8))
    b = uniform_ancestral_step(logits, z_t, 0.5, 0.01, top_k=50, generator=gen(9))
    monkeypatch.setattr(samplers, "_CPU_CHUNK_ELEMENTS", 1)  # one row per chunk
    assert torch.equal(a, sample_categorical_logits(logits, top_p=0.8, generator=gen(8)))
    assert torch.equal(
        b, uniform_ancestral_step(logits, z_t, 0.5, 0.01, top_k=50, generator=gen(9))
    )


def filtered(probs: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Reference top-k then nucleus filtering by a full sort, renormalised (float64)."""
    p = probs.to(F64).clone()
    if top_k is not None:
        kth = p.topk(top_k, -1).values[..., -1:]
        p = torch.where(p >= kth, p, 0)
    if top_p is not None:
        values = p.sort(-1, descending=True).values
        cum = values.cumsum(-1)
        first = (cum < top_p * p.sum(-1, keepdim=True)).sum(-1, keepdim=True)
        p = torch.where(p >= values.gather(-1, first), p, 0)
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize(("top_k", "top_p"), [(2, None), (None, 0.8), (3, 0.7), (None, 0.05)])
def test_top_k_and_nucleus_laws(top_k, top_p):
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    x = sample_categorical_logits(
        p.log().expand(20000, -1), top_k=top_k, top_p=top_p, generator=gen(10)
    )
    assert chi_square_p(x, filtered(p, top_k, top_p)) > P_MIN


@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 8.0), top_p=st.floats(0.05, 0.999))
def test_nucleus_support_matches_a_full_sort(seed, scale, top_p):
    # K = 3000: peaked rows settle in the top 64, flat ones go through the radix select; ties
    # and float64 rows too.
    logits = torch.randn(4, 3000, generator=gen(seed)) * scale
    logits[0, :50] = logits[0, 50]
    for dtype in (torch.float32, F64):
        probs = torch.softmax(logits.to(dtype), -1)
        keep = probs >= samplers._nucleus_threshold(probs, top_p)
        assert torch.equal(keep, filtered(probs, None, top_p) > 0)


# ---------------------------------------------------------------------------------------------
# One reverse step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a_s", "a_t"), [(0.6, 0.3), (1.0, 0.2), (0.05, 0.01), (0.9, 0.0)])
@pytest.mark.parametrize("z", [0, 3])
def test_ancestral_step_law_equals_the_posterior(a_s, a_t, z):
    k, n = 4, 20000
    p = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=F64)
    z_t = torch.full((2, n // 2), z)
    z_s = uniform_ancestral_step(
        p.log().float().expand(2, n // 2, k), z_t, a_s, a_t, generator=gen(11)
    )
    post = uniform_posterior(p.expand(1, 1, k), z_t[:1, :1], a_s, a_t)[0, 0]
    assert chi_square_p(z_s, post) > P_MIN


def test_ancestral_step_applies_filters_before_the_posterior():
    k, n = 5, 20000
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05], dtype=F64)
    z_t = torch.full((1, n), 4)  # a class that top-k removes from x_hat
    for top_k, top_p in ((2, None), (None, 0.7)):
        z_s = uniform_ancestral_step(
            p.log().expand(1, n, k), z_t, 0.7, 0.4, top_k=top_k, top_p=top_p, generator=gen(12)
        )
        post = uniform_posterior(filtered(p, top_k, top_p).expand(1, 1, k), z_t[:, :1], 0.7, 0.4)
        assert chi_square_p(z_s, post[0, 0]) > P_MIN


@pytest.mark.parametrize("kappa", [0.0, 0.3, 0.8])
def test_psi_step_law(kappa):
    k, n, a_s, a_t = 4, 20000, 0.6, 0.3
    p = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=F64)
    z_t = torch.full((1, n), 1)
    z_s = uniform_ancestral_step(
        p.log().expand(1, n, k), z_t, a_s, a_t, kappa=kappa, generator=gen(13)
    )
    post = uniform_posterior(p.expand(1, 1, k), z_t[:, :1], a_s, a_t)[0, 0]
    law = kappa * post + (1 - kappa) * (a_s * p + (1 - a_s) / k)
    assert chi_square_p(z_s, law) > P_MIN


@given(seed=st.integers(0, 2**16), a_t=st.floats(0.0, 0.99), frac=st.floats(0.0, 1.0))
def test_psi_with_kappa_one_is_ancestral_bit_for_bit(seed, a_t, frac):
    a_s = a_t + frac * (1 - a_t)
    logits = torch.randn(2, 16, 9, generator=gen(seed))
    z_t = torch.randint(0, 9, (2, 16), generator=gen(seed + 1))
    ancestral = uniform_ancestral_step(logits, z_t, a_s, a_t, generator=gen(seed + 2))
    psi = uniform_ancestral_step(logits, z_t, a_s, a_t, kappa=1.0, generator=gen(seed + 2))
    assert torch.equal(ancestral, psi)


def test_steps_take_float_per_sequence_and_per_token_levels_alike():
    logits = torch.randn(3, 10, 8, generator=gen(30), dtype=F64)  # float64 logits work too
    z_t = torch.randint(0, 8, (3, 10), generator=gen(31))
    levels = {"alpha_s": 0.7, "alpha_t": 0.4, "kappa": 0.6}
    as_float = uniform_ancestral_step(logits, z_t, **levels, generator=gen(32))
    for shape in ((3, 1), (3, 10)):
        tensors = {name: torch.full(shape, v, dtype=F64) for name, v in levels.items()}
        same = uniform_ancestral_step(logits, z_t, **tensors, generator=gen(32))
        assert torch.equal(as_float, same)
    z_m = torch.where(torch.rand(3, 10, generator=gen(33)) < 0.5, 7, z_t.clamp(max=6))
    m_float = masked_ancestral_step(logits, z_m, 0.7, 0.4, mask_id=7, remask=0.2, generator=gen(34))
    per_token = torch.full((3, 10), 0.2, dtype=F64)
    m_tensor = masked_ancestral_step(
        logits,
        z_m,
        torch.full((3, 1), 0.7, dtype=F64),
        0.4,
        mask_id=7,
        remask=per_token,
        generator=gen(34),
    )
    assert torch.equal(m_float, m_tensor)
    with pytest.raises(ValueError, match="alpha_s"):
        uniform_ancestral_step(logits, z_t, torch.full((3,), 0.7), 0.4)  # (B,) is ambiguous


@pytest.mark.parametrize("sigma", [None, 0.3])
def test_masked_step_law(sigma):
    k, n, a_s, a_t, mask = 5, 20000, 0.6, 0.3, 4
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.7])  # the mask class's 0.7 must be ignored (SUBS)
    x_hat = torch.cat([p[:4] / p[:4].sum(), torch.zeros(1)])
    z_t = torch.full((1, n), mask)
    z_t[0, n // 2 :] = 2  # half unmasked
    z_s = masked_ancestral_step(
        p.log().expand(1, n, k), z_t, a_s, a_t, mask_id=mask, remask=sigma, generator=gen(14)
    )
    s = 0.0 if sigma is None else sigma
    unmask = (a_s - (1 - s) * a_t) / (1 - a_t)
    law_masked = unmask * x_hat + (1 - unmask) * torch.nn.functional.one_hot(torch.tensor(mask), k)
    assert chi_square_p(z_s[0, : n // 2], law_masked) > P_MIN
    kept = z_s[0, n // 2 :]
    if sigma is None:
        assert bool((kept == 2).all())
    else:
        assert chi_square_p(kept, torch.tensor([0, 0, 1 - s, 0, s])) > P_MIN


# ---------------------------------------------------------------------------------------------
# Full samplers: toy laws with exact denoisers
# ---------------------------------------------------------------------------------------------

JOINT = torch.tensor([[0.30, 0.05, 0.05], [0.05, 0.20, 0.05], [0.02, 0.08, 0.20]], dtype=F64)
JOINT = JOINT / JOINT.sum()  # a dependent law of two tokens over K = 3


def exact_uniform_denoiser(z_t, sigma):
    """x_hat^l = p(x_0^l | z_t^{-l}) for the two-token law JOINT (see the module docstring)."""
    b = z_t.shape[0]
    a = torch.exp(-sigma.to(F64)).view(b, 1)
    like = lambda z: a * torch.nn.functional.one_hot(z, 3).to(F64) + (1 - a) / 3  # q(z | x), (b, x)
    first = like(z_t[:, 1]) @ JOINT.T  # sum_x1 joint[x0, x1] q(z_1 | x1)
    second = like(z_t[:, 0]) @ JOINT
    return torch.stack([first, second], 1).log().float()


def chain_law(step_matrix, steps: int, start: torch.Tensor) -> torch.Tensor:
    grid = torch.linspace(1, 0, steps + 1, dtype=F64).tolist()
    law = start
    for i in range(steps):
        law = law @ step_matrix(grid[i], grid[i + 1])
    return law


STATES = list(itertools.product(range(3), repeat=2))


def uniform_step_matrix(t: float, s: float) -> torch.Tensor:
    """The sampler's transition matrix over the 9 two-token states, from uniform_posterior."""
    a_t, a_s = alpha(t), alpha(s)
    z = torch.tensor(STATES)
    x_hat = torch.softmax(exact_uniform_denoiser(z, torch.full((9,), -math.log(a_t))).to(F64), -1)
    post = uniform_posterior(x_hat, z, a_s, a_t)  # (9, 2, 3)
    return torch.stack([post[:, 0, i] * post[:, 1, j] for i, j in STATES], 1)


def test_uniform_sampler_reproduces_a_one_token_law_at_any_step_count():
    pi = torch.tensor([0.6, 0.3, 0.1])
    denoiser = lambda z, sigma: pi.log().expand(*z.shape, 3)  # exact for one token: x_hat = pi
    for steps in (1, 3, 10):
        x = sample_uniform(
            denoiser,
            6000,
            1,
            steps,
            schedule=SCHEDULE,
            vocab_size=3,
            greedy_tail=False,
            generator=gen(steps),
        )
        assert chi_square_p(x, pi) > P_MIN


def test_uniform_sampler_reproduces_a_two_token_law_with_many_steps():
    start = torch.full((9,), 1 / 9, dtype=F64)
    tv = [
        0.5 * float((chain_law(uniform_step_matrix, n, start) - JOINT.flatten()).abs().sum())
        for n in (4, 16, 64)
    ]
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.01, tv  # O(1 / steps) factorisation error
    steps, n = 64, 6000
    x = sample_uniform(
        exact_uniform_denoiser,
        n,
        2,
        steps,
        schedule=SCHEDULE,
        vocab_size=3,
        greedy_tail=False,
        generator=gen(15),
    )
    law = chain_law(uniform_step_matrix, steps, start)
    assert chi_square_p(x[:, 0] * 3 + x[:, 1], law) > P_MIN  # the sampler is that chain
    assert chi_square_p(x[:, 0] * 3 + x[:, 1], JOINT.flatten()) > P_MIN  # and near the data


MASK = 3  # K = 4: three real tokens and the mask


def exact_masked_denoiser(z_t, sigma):
    """x_hat^l = p(x_0^l | z_t^{-l}) for JOINT; the mask class gets a large finite logit, which
    SUBS must ignore. Unmasked positions get some finite logits (never used)."""
    other_masked = z_t == MASK
    first = torch.where(other_masked[:, 1:2], JOINT.sum(1), JOINT[:, z_t[:, 1].clamp(max=2)].T)
    second = torch.where(other_masked[:, 0:1], JOINT.sum(0), JOINT[z_t[:, 0].clamp(max=2)])
    x_hat = torch.stack([first, second], 1)
    x_hat = x_hat / x_hat.sum(-1, keepdim=True)
    return torch.cat([x_hat.log(), torch.full((*z_t.shape, 1), 5.0, dtype=F64)], -1).float()


def test_masked_sampler_reproduces_a_two_token_law():
    # Unmasking both tokens in one step draws them independently: exact only when that never
    # happens, so many steps again; one token is exact at any step count.
    x = sample_masked(
        exact_masked_denoiser,
        6000,
        2,
        128,
        schedule=SCHEDULE,
        vocab_size=4,
        mask_id=MASK,
        greedy_tail=False,
        generator=gen(16),
    )
    assert bool((x != MASK).all())
    assert chi_square_p(x[:, 0] * 3 + x[:, 1], JOINT.flatten()) > P_MIN
    pi = JOINT.sum(1)
    one = lambda z, sigma: (
        torch.cat([pi.log(), torch.zeros(1, dtype=F64)]).float().expand(*z.shape, 4)
    )
    for remask in (None, CappedRemask(SCHEDULE, 0.2), RescaledRemask(SCHEDULE, 0.5)):
        x = sample_masked(
            one,
            6000,
            1,
            4,
            schedule=SCHEDULE,
            vocab_size=4,
            mask_id=MASK,
            remask=remask,
            greedy_tail=False,
            generator=gen(17),
        )
        assert chi_square_p(x, torch.cat([pi, torch.zeros(1, dtype=F64)])) > P_MIN


class CountingDenoiser:
    """A deterministic denoiser that depends on every input token (and optionally on sigma)."""

    def __init__(self, vocab_size: int, use_sigma: bool = False):
        self.table = torch.randn(vocab_size, vocab_size, generator=gen(99))
        self.use_sigma = use_sigma
        self.calls = 0
        self.cond = []

    def __call__(self, z_t, sigma, **cond):
        self.calls += 1
        self.cond.append(cond)
        mixed = self.table[z_t] + 0.3 * self.table[z_t.roll(1, -1)]
        return mixed + (sigma.view(-1, 1, 1) if self.use_sigma else 0)


def test_cached_masked_sampler_equals_uncached():
    kwargs = dict(schedule=SCHEDULE, vocab_size=6, mask_id=5, top_k=4)
    cached, uncached = CountingDenoiser(6), CountingDenoiser(6)
    a = sample_masked(cached, 3, 5, 64, cache=True, generator=gen(18), **kwargs)
    b = sample_masked(uncached, 3, 5, 64, cache=False, generator=gen(18), **kwargs)
    assert torch.equal(a, b)
    assert uncached.calls == 64 and cached.calls < 64
    remask = CappedRemask(SCHEDULE, 0.05)
    c = sample_masked(CountingDenoiser(6), 3, 5, 64, remask=remask, generator=gen(19), **kwargs)
    d = sample_masked(
        CountingDenoiser(6), 3, 5, 64, remask=remask, cache=False, generator=gen(19), **kwargs
    )
    assert torch.equal(c, d)


def test_psi_sampler_with_kappa_one_equals_ancestral():
    kwargs = dict(schedule=SCHEDULE, vocab_size=7, top_p=0.9)
    den = CountingDenoiser(7, use_sigma=True)
    a = sample_uniform(den, 3, 8, 12, generator=gen(20), **kwargs)
    b = sample_uniform(den, 3, 8, 12, kappa=ConstantKappa(1.0), generator=gen(20), **kwargs)
    c = sample_uniform(den, 3, 8, 12, kappa=1.0, generator=gen(20), **kwargs)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = sample_uniform(den, 3, 8, 12, kappa=CappedKappa(SCHEDULE, 0.1), generator=gen(20), **kwargs)
    assert d.shape == (3, 8)


def test_kappa_and_remask_schedules():
    assert ConstantKappa(0.7)(0.5, 0.4) == 0.7
    assert ConstantKappa(0.7, t_on=0.3)(0.5, 0.4) == 1.0  # outside the window
    capped = CappedKappa(SCHEDULE, 0.05)
    for t, s in ((1.0, 0.9), (0.5, 0.4), (0.1, 0.0)):
        kappa = capped(t, s)
        assert 0.0 <= kappa <= 1.0
        assert (1 - kappa) * (1 - alpha(s)) == pytest.approx(min(0.05, 1 - alpha(s)))
    for t, s in ((1.0, 0.9), (0.5, 0.4), (0.1, 0.05)):
        sigma_max = min(1.0, (1 - alpha(s)) / alpha(t))
        assert CappedRemask(SCHEDULE, 0.05)(t, s) == pytest.approx(min(0.05, sigma_max))
        assert RescaledRemask(SCHEDULE, 0.5)(t, s) == pytest.approx(0.5 * sigma_max)
    assert RescaledRemask(SCHEDULE, 0.5, t_off=0.6)(0.5, 0.4) == 0.0
    with pytest.raises(ValueError, match="kappa"):
        ConstantKappa(1.5)
    with pytest.raises(ValueError, match="t_off"):
        CappedRemask(SCHEDULE, 0.1, t_on=0.2, t_off=0.5)


def test_greedy_tail_returns_the_argmax():
    den = CountingDenoiser(11)
    z_1 = torch.randint(0, 11, (4, 9), generator=gen(21))
    x = sample_uniform(den, 4, 9, 1, schedule=SCHEDULE, vocab_size=11, generator=gen(21))
    assert torch.equal(x, den(z_1, torch.zeros(4)).argmax(-1))
    # masked: the last step fills every mask with the argmax over the real classes
    x = sample_masked(den, 4, 9, 1, schedule=SCHEDULE, vocab_size=11, mask_id=10, generator=gen(0))
    logits = den(torch.full((4, 9), 10), torch.zeros(4))
    assert torch.equal(x, logits[..., :10].argmax(-1))


def test_sampler_plumbing():
    den = CountingDenoiser(5, use_sigma=True)
    seen = []
    grid = [0.9, 0.5, 0.2, 0.0]
    x = sample_uniform(
        den,
        2,
        3,
        3,
        schedule=SCHEDULE,
        vocab_size=5,
        time_grid=grid,
        callback=lambda i, s, z: seen.append((i, s, z.shape)),
        progress=True,
        generator=gen(22),
        label=torch.ones(2),
    )
    assert x.shape == (2, 3) and x.dtype == torch.long
    assert seen == [(0, 0.5, (2, 3)), (1, 0.2, (2, 3)), (2, 0.0, (2, 3))]
    assert den.calls == 3 and all("label" in c for c in den.cond)
    same = sample_uniform(
        den,
        2,
        3,
        3,
        schedule=SCHEDULE,
        vocab_size=5,
        time_grid=grid,
        generator=gen(22),
        label=torch.ones(2),
    )
    assert torch.equal(x, same)

    sigmas = []
    record = lambda z, sigma: (sigmas.append(sigma), torch.zeros(*z.shape, 5))[1]
    sample_uniform(record, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, generator=gen(23))
    assert sigmas[0].shape == (2,) and sigmas[0].dtype == torch.float32
    torch.testing.assert_close(sigmas[0], torch.full((2,), -math.log(alpha(1.0))))
    torch.testing.assert_close(sigmas[1], torch.full((2,), -math.log(alpha(0.5))))
    sigmas.clear()
    sample_masked(record, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, mask_id=4, generator=gen(24))
    assert all(bool((s == 0).all()) for s in sigmas)  # not time-conditioned: sigma = 0
    sigmas.clear()
    sample_masked(
        record,
        2,
        3,
        2,
        schedule=SCHEDULE,
        vocab_size=5,
        mask_id=4,
        time_conditioned=True,
        generator=gen(24),
    )
    torch.testing.assert_close(sigmas[0], torch.full((2,), -math.log(alpha(1.0))))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    den = CountingDenoiser(5)
    common = dict(schedule=SCHEDULE, vocab_size=5)
    for steps in (0, -1):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            sample_uniform(den, 2, 3, steps, **common)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_uniform(den, 2, 3, 2, time_grid=[1.0, 1.0, 0.0], **common)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_masked(den, 2, 3, 2, time_grid=[0.0, 0.5, 1.0], mask_id=4, **common)
    with pytest.raises(ValueError, match="steps \\+ 1"):
        sample_uniform(den, 2, 3, 3, time_grid=[1.0, 0.0], **common)
    with pytest.raises(ValueError, match="denoiser returned"):
        sample_uniform(lambda z, s: torch.zeros(2, 3, 4), 2, 3, 2, **common)
    with pytest.raises(ValueError, match="denoiser returned"):
        sample_masked(lambda z, s: torch.zeros(2, 3), 2, 3, 2, mask_id=4, **common)
    nan = lambda z, s: torch.full((*z.shape, 5), float("nan"))
    for greedy in (True, False):
        with pytest.raises(ValueError, match="denoiser output at step 0.*NaN"):
            sample_uniform(nan, 2, 3, 1, greedy_tail=greedy, **common)
        with pytest.raises(ValueError, match="denoiser output at step 0.*NaN"):
            sample_masked(nan, 2, 3, 1, mask_id=4, greedy_tail=greedy, **common)
    with pytest.raises(ValueError, match="cache"):
        sample_masked(den, 2, 3, 2, mask_id=4, cache=True, time_conditioned=True, **common)
    with pytest.raises(ValueError, match="kappa"):
        sample_uniform(den, 2, 3, 2, kappa=lambda t, s: 1.5, **common)
    with pytest.raises(ValueError, match="sigma_max"):
        sample_masked(den, 2, 3, 4, mask_id=4, remask=lambda t, s: 1.0, **common)
    with pytest.raises(ValueError, match="mask_id"):
        sample_masked(den, 2, 3, 2, mask_id=5, **common)
    with pytest.raises(ValueError, match="top_p"):
        sample_uniform(den, 2, 3, 2, top_p=0.0, **common)
    with pytest.raises(ValueError, match="vocab_size"):
        sample_uniform(den, 2, 3, 2, schedule=SCHEDULE, vocab_size=1)
    probs = torch.full((1, 2, 5), 0.2)
    with pytest.raises(ValueError, match="alpha_s must be >= alpha_t"):
        uniform_posterior(probs, torch.zeros(1, 2, dtype=torch.long), 0.2, 0.5)
    with pytest.raises(ValueError, match="alpha_t"):
        uniform_ancestral_step(probs.log(), torch.zeros(1, 2, dtype=torch.long), 1.0, 1.5)
    with pytest.raises(ValueError, match="z_t"):
        uniform_ancestral_step(probs.log(), torch.full((1, 2), 7), 0.5, 0.2)
    with pytest.raises(ValueError, match="negative"):
        sample_categorical(torch.tensor([[0.5, -0.1, 0.6]]))
    with pytest.raises(ValueError, match="no class of positive probability"):
        sample_categorical(torch.zeros(2, 3))
