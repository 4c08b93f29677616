"""discdiff.samplers.categorical: every draw has the intended law (chi-square against the exact
float64 law), top-k and nucleus filtering keep the sets a full sort keeps, the chunking changes
nothing, and bad input fails loudly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import discdiff.samplers.categorical as categorical
from discdiff.samplers import sample_categorical, sample_categorical_logits, uniform_ancestral_step
from discdiff.testing import filtered_law as filtered
from tests.test_samplers_laws import F64, P_MIN, chi_square_p, gen


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
    assert y.shape == (4, 5000) and y.dtype == torch.long
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
    chunks = []
    monkeypatch.setattr(categorical, "chunk_rows", lambda k, device, **_: chunks.append(k) or 1)
    assert torch.equal(a, sample_categorical_logits(logits, top_p=0.8, generator=gen(8)))
    assert torch.equal(
        b, uniform_ancestral_step(logits, z_t, 0.5, 0.01, top_k=50, generator=gen(9))
    )
    assert chunks  # the patched chunking (one row per chunk) was used


@pytest.mark.parametrize(("top_k", "top_p"), [(2, None), (None, 0.8), (3, 0.7), (None, 0.05)])
def test_top_k_and_nucleus_laws(top_k, top_p):
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    x = sample_categorical_logits(
        p.log().expand(20000, -1), top_k=top_k, top_p=top_p, generator=gen(10)
    )
    assert chi_square_p(x, filtered(p, top_k, top_p)) > P_MIN


def test_top_p_one_and_top_k_equal_to_k_filter_nothing():
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    plain = sample_categorical_logits(p.log().expand(500, -1), generator=gen(11))
    for options in ({"top_p": 1}, {"top_p": 1.0}, {"top_k": 5}, {"top_k": 9}):
        same = sample_categorical_logits(p.log().expand(500, -1), generator=gen(11), **options)
        assert torch.equal(plain, same), options


@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 8.0), top_p=st.floats(0.05, 0.999))
def test_nucleus_support_matches_a_full_sort(seed, scale, top_p):
    # K = 3000: peaked rows settle in the top 64, flat ones go through the radix select; ties
    # and float64 rows too.
    logits = torch.randn(4, 3000, generator=gen(seed)) * scale
    logits[0, :50] = logits[0, 50]
    for dtype in (torch.float32, F64):
        probs = torch.softmax(logits.to(dtype), -1)
        keep = probs >= categorical._nucleus_threshold(probs, top_p)
        assert torch.equal(keep, filtered(probs, None, top_p) > 0)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="negative"):
        sample_categorical(torch.tensor([[0.5, -0.1, 0.6]]))
    with pytest.raises(ValueError, match="no class of positive probability"):
        sample_categorical(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        sample_categorical(torch.tensor([[0.5, float("nan"), 0.6]]))
    with pytest.raises(ValueError, match="top_p"):
        sample_categorical_logits(torch.zeros(2, 3), top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_categorical_logits(torch.zeros(2, 3), top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        sample_categorical_logits(torch.zeros(2, 3), top_k=0)
