"""discdiff.samplers.posterior, .steps and .correctors: the reference posteriors are Bayes' rule
written with explicit K x K transition matrices, each one-step kernel draws from its reference
law (chi-square), the Ψ step with kappa = 1 is ancestral bit for bit, the tails are the argmax
and the posterior mode, and the corrector schedules are their formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff.samplers import (
    CappedKappa,
    CappedRemask,
    ConstantKappa,
    RescaledRemask,
    denoising_posterior,
    greedy_tail,
    map_tail,
    masked_ancestral_step,
    psi_posterior,
    uniform_ancestral_step,
    uniform_posterior,
)
from discdiff.testing import filtered_law as filtered
from tests.test_samplers_laws import F64, P_MIN, SCHEDULE, alpha, chi_square_p, gen


def transition(a: float, k: int) -> torch.Tensor:
    """The uniform-state forward matrix [x, z] = q(z | x) = a [z = x] + (1 - a) / K."""
    return a * torch.eye(k, dtype=F64) + (1 - a) / k * torch.ones(k, k, dtype=F64)


def random_probs(shape: tuple[int, ...], seed: int, floor: float = 1e-3) -> torch.Tensor:
    """Rows of a random law (exponential weights, so peaked and flat rows both occur)."""
    w = -torch.log(torch.rand(shape, generator=gen(seed), dtype=F64)) + floor
    return w / w.sum(-1, keepdim=True)


def bayes_posterior(x_hat: torch.Tensor, i: int, a_s: float, a_t: float) -> torch.Tensor:
    """q(z_s = j | z_t = i, x_hat) ∝ q(z_t = i | z_s = j) q(z_s = j | x_hat) for one row (K,)."""
    k = x_hat.numel()
    a_ts = a_t / a_s if a_s > 0 else 1.0
    joint = transition(a_ts, k)[:, i] * (x_hat @ transition(a_s, k))
    return joint / joint.sum()


def bayes_denoising_posterior(x_hat: torch.Tensor, i: int, a_t: float) -> torch.Tensor:
    """q0(j) ∝ q(z_t = i | x = j) x_hat_j, x_hat the leave-one-out law (Concepts §5), one row."""
    q0 = transition(a_t, x_hat.numel())[:, i] * x_hat
    return q0 / q0.sum()


def bayes_psi(x_hat: torch.Tensor, i: int, a_s: float, a_t: float, kappa: float) -> torch.Tensor:
    """kappa posterior + (1 - kappa) forward(q0, alpha_s), the forward a matrix product."""
    renoised = bayes_denoising_posterior(x_hat, i, a_t) @ transition(a_s, x_hat.numel())
    return kappa * bayes_posterior(x_hat, i, a_s, a_t) + (1 - kappa) * renoised


levels = dict(a_t=st.floats(0.0, 0.99), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))


# ---------------------------------------------------------------------------------------------
# The reference posteriors
# ---------------------------------------------------------------------------------------------


@given(k=st.integers(2, 6), **levels)
def test_posterior_is_bayes_rule_with_explicit_matrices(k, a_t, frac, seed):
    a_s = a_t + frac * (1 - a_t)
    probs = random_probs((1, k, k), seed)
    z_t = torch.arange(k).unsqueeze(0)  # position i holds z_t = i
    got = uniform_posterior(probs, z_t, a_s, a_t)
    for i in range(k):
        expected = bayes_posterior(probs[0, i], i, a_s, a_t)
        torch.testing.assert_close(got[0, i], expected, rtol=1e-10, atol=1e-12)


@given(k=st.integers(2, 6), **levels)
def test_denoising_posterior_is_its_definition(k, a_t, frac, seed):
    probs = random_probs((1, k, k), seed)
    z_t = torch.arange(k).unsqueeze(0)
    got = denoising_posterior(probs, z_t, a_t)
    for i in range(k):
        expected = bayes_denoising_posterior(probs[0, i], i, a_t)
        torch.testing.assert_close(got[0, i], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, uniform_posterior(probs, z_t, 1.0, a_t), rtol=0, atol=0)


@given(k=st.integers(2, 6), kappa=st.floats(0.0, 1.0), **levels)
def test_psi_posterior_is_the_spec_formula(k, kappa, a_t, frac, seed):
    a_s = a_t + frac * (1 - a_t)
    probs = random_probs((1, k, k), seed)
    z_t = torch.arange(k).unsqueeze(0)
    got = psi_posterior(probs, z_t, a_s, a_t, kappa)
    for i in range(k):
        expected = bayes_psi(probs[0, i], i, a_s, a_t, kappa)
        torch.testing.assert_close(got[0, i], expected, rtol=1e-10, atol=1e-12)
    assert got.dtype == F64
    torch.testing.assert_close(got.sum(-1), torch.ones(1, k, dtype=F64), rtol=0, atol=1e-12)
    ancestral = psi_posterior(probs, z_t, a_s, a_t, 1.0)
    torch.testing.assert_close(ancestral, uniform_posterior(probs, z_t, a_s, a_t), rtol=0, atol=0)


def test_psi_posterior_takes_per_sequence_and_per_token_levels():
    probs = random_probs((2, 3, 5), seed=1)
    z_t = torch.randint(0, 5, (2, 3), generator=gen(2))
    a_t = torch.tensor([[0.2], [0.5]], dtype=F64)
    a_s = torch.tensor([[0.4], [0.9]], dtype=F64)
    kappa = torch.tensor([[0.3], [0.8]], dtype=F64)
    got = psi_posterior(probs, z_t, a_s, a_t, kappa)
    for b in range(2):
        for pos in range(3):
            expected = bayes_psi(probs[b, pos], int(z_t[b, pos]), float(a_s[b]), float(a_t[b]),
                                 float(kappa[b]))  # fmt: skip
            torch.testing.assert_close(got[b, pos], expected)
    per_token = psi_posterior(probs, z_t, a_s.expand(2, 3), a_t.expand(2, 3), kappa.expand(2, 3))
    torch.testing.assert_close(per_token, got)


@given(k=st.integers(2, 50), a_t=st.floats(0.0, 0.999), frac=st.floats(0.0, 1.0))
def test_posterior_rows_sum_to_one_in_the_input_dtype(k, a_t, frac):
    a_s = a_t + frac * (1 - a_t)
    for dtype, tol in ((torch.float32, 1e-5), (F64, 1e-12)):
        probs = torch.softmax(torch.randn(2, 3, k, generator=gen(k), dtype=dtype), -1)
        z_t = torch.randint(0, k, (2, 3), generator=gen(k + 1))
        for post in (
            uniform_posterior(probs, z_t, a_s, a_t),
            denoising_posterior(probs, z_t, a_t),
            psi_posterior(probs, z_t, a_s, a_t, 0.5),
        ):
            assert post.dtype == dtype
            assert bool((post >= 0).all())
            ones = torch.ones(2, 3, dtype=dtype)
            torch.testing.assert_close(post.sum(-1), ones, rtol=0, atol=tol)


def test_posterior_takes_per_sequence_and_per_token_levels():
    probs = torch.softmax(torch.randn(2, 3, 5, generator=gen(3), dtype=F64), -1)
    z_t = torch.randint(0, 5, (2, 3), generator=gen(4))
    a_t = torch.tensor([[0.2], [0.5]], dtype=F64)
    a_s = torch.tensor([[0.4], [0.9]], dtype=F64)
    post = uniform_posterior(probs, z_t, a_s, a_t)
    for b in range(2):
        row = uniform_posterior(probs[b : b + 1], z_t[b : b + 1], float(a_s[b]), float(a_t[b]))
        torch.testing.assert_close(post[b : b + 1], row)
    per_token = uniform_posterior(probs, z_t, a_s.expand(2, 3), a_t.expand(2, 3))
    torch.testing.assert_close(per_token, post)


def test_posterior_end_points():
    probs = torch.softmax(torch.randn(1, 4, 6, generator=gen(5), dtype=F64), -1)
    z_t = torch.randint(0, 6, (1, 4), generator=gen(6))
    one_hot = torch.nn.functional.one_hot(z_t, 6).to(F64)
    # no time elapses: stay at z_t
    torch.testing.assert_close(uniform_posterior(probs, z_t, 0.3, 0.3), one_hot)
    torch.testing.assert_close(psi_posterior(probs, z_t, 0.3, 0.3, 1.0), one_hot)
    # pure noise to clean: the posterior is x_hat, and so is the denoising posterior
    torch.testing.assert_close(uniform_posterior(probs, z_t, 1.0, 0.0), probs)
    torch.testing.assert_close(denoising_posterior(probs, z_t, 0.0), probs)
    # at alpha_t = 1 the denoising posterior is z_t itself
    torch.testing.assert_close(denoising_posterior(probs, z_t, 1.0), one_hot)
    # kappa = 0 at alpha_s = 1: the Ψ step is the denoising posterior
    torch.testing.assert_close(psi_posterior(probs, z_t, 1.0, 0.4, 0.0),
                               denoising_posterior(probs, z_t, 0.4))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# One reverse step: the kernels draw from the reference laws
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


@given(
    k=st.integers(2, 5),
    z=st.integers(0, 4),
    kappa=st.floats(0.0, 1.0),
    a_t=st.floats(0.0, 0.95),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_psi_step_law_is_psi_posterior(k, z, kappa, a_t, frac, seed):
    """For random x_hat (float64 logits), z_t, alpha_s >= alpha_t and kappa, 8000 draws of
    ``uniform_ancestral_step(kappa=)`` against the explicit ``psi_posterior``."""
    a_s = a_t + frac * (1 - a_t)
    n = 8000
    x_hat = random_probs((k,), seed, floor=0.02)
    z_t = torch.full((1, n), z % k)
    z_s = uniform_ancestral_step(
        x_hat.log().expand(1, n, k), z_t, a_s, a_t, kappa=kappa, generator=gen(seed)
    )
    law = psi_posterior(x_hat.view(1, 1, k), z_t[:, :1], a_s, a_t, kappa)[0, 0]
    torch.testing.assert_close(law, bayes_psi(x_hat, z % k, a_s, a_t, kappa))
    assert chi_square_p(z_s, law) > P_MIN


@pytest.mark.parametrize("kappa", [0.0, 0.3, 0.8])
def test_psi_step_law(kappa):
    k, n, a_s, a_t = 4, 20000, 0.6, 0.3
    p = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=F64)
    z_t = torch.full((1, n), 1)
    z_s = uniform_ancestral_step(
        p.log().expand(1, n, k), z_t, a_s, a_t, kappa=kappa, generator=gen(13)
    )
    # Concepts §5: re-noise the denoising posterior q0 (not x_hat) to level s
    post = uniform_posterior(p.expand(1, 1, k), z_t[:, :1], a_s, a_t)[0, 0]
    q0 = p * (a_t * (torch.arange(k) == 1) + (1 - a_t) / k)
    q0 = q0 / q0.sum()
    law = kappa * post + (1 - kappa) * (a_s * q0 + (1 - a_s) / k)
    assert chi_square_p(z_s, law) > P_MIN


@given(seed=st.integers(0, 2**16), a_t=st.floats(0.0, 0.99), frac=st.floats(0.0, 1.0))
def test_psi_with_kappa_one_is_ancestral_bit_for_bit(seed, a_t, frac):
    a_s = a_t + frac * (1 - a_t)
    logits = torch.randn(2, 16, 9, generator=gen(seed))
    z_t = torch.randint(0, 9, (2, 16), generator=gen(seed + 1))
    ancestral = uniform_ancestral_step(logits, z_t, a_s, a_t, generator=gen(seed + 2))
    for one in (1.0, 1, torch.ones(2, 1, dtype=F64)):
        psi = uniform_ancestral_step(logits, z_t, a_s, a_t, kappa=one, generator=gen(seed + 2))
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
# The tails
# ---------------------------------------------------------------------------------------------


def test_greedy_tail_is_the_argmax_and_leaves_the_logits_alone():
    logits = torch.randn(3, 7, 6, generator=gen(40))
    logits[0, 0, 5] = 10.0  # the excluded class is the best one here
    before = logits.clone()
    assert torch.equal(greedy_tail(logits), logits.argmax(-1))
    excluded = greedy_tail(logits, exclude=5)
    assert torch.equal(excluded, logits[..., :5].argmax(-1))
    assert torch.equal(logits, before)


@given(k=st.integers(2, 8), a_t=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_map_tail_is_the_mode_of_the_denoising_posterior(k, a_t, seed):
    logits = torch.randn(2, 16, k, generator=gen(seed), dtype=F64) * 3
    z_t = torch.randint(0, k, (2, 16), generator=gen(seed + 1))
    got = map_tail(logits, z_t, a_t)
    post = denoising_posterior(torch.softmax(logits, -1), z_t, a_t)
    best = post.max(-1).values
    at_got = post.gather(-1, got.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(at_got, best, rtol=1e-12, atol=0)  # a mode (ties: either)
    if a_t == 1.0:
        assert torch.equal(got, z_t)  # clean: the token is its own evidence


def test_map_tail_keeps_the_token_unless_the_evidence_is_overwhelmed():
    # K = 3, x_hat = (0.9, 0.09, 0.01); z_t = 2. At alpha_t, q0(2) / q0(0) =
    # (alpha_t + (1 - alpha_t) / 3) 0.01 / ((1 - alpha_t) / 3 * 0.9).
    logits = torch.tensor([0.9, 0.09, 0.01], dtype=F64).log().view(1, 1, 3)
    z_t = torch.tensor([[2]])
    assert int(map_tail(logits, z_t, 0.9)) == 0  # ratio 0.37: x_hat wins
    assert int(map_tail(logits, z_t, 0.99)) == 2  # ratio 3.7: the token's evidence wins
    assert int(map_tail(logits, z_t, 0.0)) == 0  # no evidence: argmax x_hat
    assert int(greedy_tail(logits)) == 0  # argmax x_hat ignores the evidence at any alpha
    impossible = logits.clone()
    impossible[..., 2] = -torch.inf  # x_hat rules z_t out: the mode is elsewhere
    assert int(map_tail(impossible, z_t, 0.999999)) == 0


# ---------------------------------------------------------------------------------------------
# Corrector schedules
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    probs = torch.full((1, 2, 5), 0.2)
    zeros = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha_s must be >= alpha_t"):
        uniform_posterior(probs, zeros, 0.2, 0.5)
    with pytest.raises(ValueError, match="alpha_s must be >= alpha_t"):
        psi_posterior(probs, zeros, 0.2, 0.5, 0.5)
    with pytest.raises(ValueError, match="kappa"):
        psi_posterior(probs, zeros, 0.5, 0.2, 1.5)
    with pytest.raises(ValueError, match="alpha_t"):
        denoising_posterior(probs, zeros, 1.5)
    with pytest.raises(ValueError, match="alpha_t"):
        uniform_ancestral_step(probs.log(), zeros, 1.0, 1.5)
    with pytest.raises(ValueError, match="kappa"):
        uniform_ancestral_step(probs.log(), zeros, 0.5, 0.2, kappa=-0.1)
    with pytest.raises(ValueError, match="z_t"):
        uniform_ancestral_step(probs.log(), torch.full((1, 2), 7), 0.5, 0.2)
    with pytest.raises(ValueError, match="top_p"):
        uniform_ancestral_step(probs.log(), zeros, 0.5, 0.2, top_p=0.0)
    with pytest.raises(ValueError, match="mask_id"):
        masked_ancestral_step(probs.log(), zeros, 0.5, 0.2, mask_id=5)
    with pytest.raises(ValueError, match="sigma_max"):
        masked_ancestral_step(probs.log(), zeros, 0.9, 0.5, mask_id=4, remask=0.3)
