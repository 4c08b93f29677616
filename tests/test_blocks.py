"""Block diffusion (Concepts, "Block diffusion"): the block NELBO and the block sampler, checked
exactly on toy laws with their block-optimal denoiser (``discdiff.testing.blocks``).

- the block NELBO at b = L is today's NELBO and loss on the same draws; for the masked process
  at b = 1 with a level-blind denoiser it is the autoregressive NLL (exact expectation, 1e-10);
  it bounds -log p (exact expectations by enumeration and quadrature, which the one-draw
  estimate matches within its stated Monte Carlo error);
- the sampler: cached = uncached token for token, the exact law of the sampled tokens (per
  block a product of transition matrices) near the model's law at 64 steps per block and equal
  to the samples' law (chi-square), prompts (whole and partial blocks) exact, EOS, the sliding
  window, NFE per block.

The figures the bounds rest on are printed by ``python -m tests.test_blocks``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion, losses
from discdiff.blocks import block_integrand
from discdiff.samplers import CappedRemask, StepRecord, TimeGrid
from discdiff.testing import (
    MaskedOracle,
    UniformOracle,
    all_sequences,
    chi_square_p,
    conditional,
    random_law,
    sequence_ids,
    total_variation,
)
from discdiff.testing.blocks import BlockOracle, block_chain, exact_block_nelbo
from discdiff.timesteps import AntitheticTimes, antithetic_times

F64 = torch.float64
K, L = 3, 6
P_MIN = 1e-4  # chi-square p-value below which a law is rejected (all draws are seeded)
TV_64 = 0.02  # exact TV bound at 64 steps per block; measured at most 0.0101 (report)


class Linear:
    """alpha_t = 1 - t: alpha_1 = 0, so the prior term vanishes and q(z_1 | x) is the prior."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t

    def dalpha_dt(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diffusion(masked: bool, b: int | None, **kw) -> UniformDiffusion | MaskedDiffusion:
    return MaskedDiffusion(K, block_size=b, **kw) if masked else UniformDiffusion(
        K, block_size=b, **kw)  # fmt: skip


def law6(seed: int = 0) -> torch.Tensor:
    return random_law(K, L, seed)


def ar_nll(law: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-sum_k log p(x^k | x^{<k}) of rows x (R, L), from the law's marginals directly."""
    out = torch.zeros(x.shape[0], dtype=F64)
    for k in range(law.ndim):
        head = law.sum(dim=tuple(range(k + 1, law.ndim))) if k + 1 < law.ndim else law
        joint = head.reshape(-1, K)[sequence_ids(x[:, :k], K) if k else 0]
        joint = joint if k else joint.expand(x.shape[0], K)
        out -= torch.log(joint.gather(-1, x[:, k : k + 1]).squeeze(-1) / joint.sum(-1))
    return out


# ---------------------------------------------------------------------------------------------
# The toy block model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_the_block_oracle_at_b_equal_L_is_the_whole_sequence_oracle(masked):
    law = random_law(K, 3, 1)
    z = torch.tensor([[0, 2, 1], [2, 3, 0], [3, 3, 3]]) if masked else torch.tensor(
        [[0, 2, 1], [2, 2, 0], [1, 1, 1]])  # fmt: skip
    a_t = 0.4
    sigma = torch.full((3,), -math.log(a_t), dtype=F64)
    block = BlockOracle(law, 3, masked=masked)(z, sigma)
    whole = (MaskedOracle(law) if masked else UniformOracle(law))(z, sigma)
    torch.testing.assert_close(block[..., :K].softmax(-1), whole[..., :K].softmax(-1))


def test_the_block_oracle_conditions_on_the_clean_prefix_and_marginalises_the_future():
    law = law6(2)
    oracle = BlockOracle(law, 2)
    x_0 = torch.tensor([[2, 0, 1, 1, 0, 2]])
    z = torch.tensor([[1, 1, 0, 2, 2, 2]])
    a_t = 0.3
    probs = oracle(z, torch.full((1, L), -math.log(a_t), dtype=F64), x_0=x_0).softmax(-1)
    # block 1 (positions 2, 3), position 2: brute force over the law
    brute = torch.zeros(K, dtype=F64)
    for x in all_sequences(K, L).tolist():
        if x[:2] == [2, 0]:
            brute[x[2]] += law[tuple(x)] * (a_t * (x[3] == 2) + (1 - a_t) / K)
    torch.testing.assert_close(probs[0, 2], brute / brute.sum())


# ---------------------------------------------------------------------------------------------
# The block NELBO
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_block_nelbo_and_loss_at_b_equal_L_are_todays(masked):
    law = law6(3)
    x_0 = all_sequences(K, L)[torch.randint(0, K**L, (16,), generator=gen(1))]
    model = BlockOracle(law, L, masked=masked)
    today, blocks = diffusion(masked, None), diffusion(masked, L)
    a, b = today.nelbo(model, x_0, generator=gen(7)), blocks.nelbo(model, x_0, generator=gen(7))
    for term in ("diffusion", "prior", "reconstruction"):
        torch.testing.assert_close(getattr(b, term), getattr(a, term), rtol=1e-6, atol=1e-7)
    for reduction in ("none", "mean"):
        la = today.loss(model, x_0, generator=gen(8), reduction=reduction)
        lb = blocks.loss(model, x_0, generator=gen(8), reduction=reduction)
        torch.testing.assert_close(lb, la, rtol=1e-6, atol=1e-7)


def test_masked_b1_with_a_level_blind_denoiser_is_the_ar_likelihood():
    """alpha_1 = 0 (no prior term): the exact block NELBO is -sum_k log p(x^k | x^{<k})."""
    law = law6(4)
    x_0 = all_sequences(K, L)[torch.randint(0, K**L, (12,), generator=gen(2))]
    d = MaskedDiffusion(K, schedule=Linear(), block_size=1)
    exact = exact_block_nelbo(d, BlockOracle(law, 1, masked=True), x_0, nodes=24)
    torch.testing.assert_close(exact, ar_nll(law, x_0), rtol=0, atol=1e-10)


def test_the_one_draw_nelbo_is_the_exact_expectation_within_its_monte_carlo_error():
    law = law6(5)
    x = all_sequences(K, L)[[17, 402]]
    for masked in (False, True):
        d = diffusion(masked, 2)
        model = BlockOracle(law, 2, masked=masked)
        exact = exact_block_nelbo(d, model, x, nodes=32)
        rows = x.repeat(2000, 1)  # alternating, so that each x meets times all over [eps, 1]
        draws = d.nelbo(model, rows, generator=gen(9)).total.sum(-1).to(F64).view(2000, 2).T
        mean, se = draws.mean(-1), draws.std(-1) / math.sqrt(2000)
        # stratified times lower the error below the i.i.d. standard error se
        assert ((mean - exact).abs() < 5 * se).all(), (mean, exact, se)


@pytest.mark.parametrize("masked", [False, True])
def test_the_block_nelbo_bounds_minus_log_p(masked):
    """Exact expectations on a K = 2, L = 6 law, every x: E_p[NELBO] >= H(p) for b in {1, 2, 3};
    with eps = 1e-5 every x's bound is -log p(x) up to the O(eps^2) of the factorised
    reconstruction (exact denoisers in continuous time are tight)."""
    law = random_law(2, L, 6)
    xs = all_sequences(2, L)
    nll = -torch.log(law.reshape(-1))
    entropy = float((law.reshape(-1) * nll).sum())
    for b in (1, 2, 3):
        process = MaskedDiffusion if masked else UniformDiffusion
        d = process(2, schedule=Linear(), eps=1e-5, block_size=b)
        nelbo = exact_block_nelbo(d, BlockOracle(law, b, masked=masked), xs, nodes=24)
        assert float((law.reshape(-1) * nelbo).sum()) >= entropy - 1e-12
        assert ((nelbo - nll).abs() < 1e-6).all(), (nelbo - nll).abs().max()


def test_the_block_loss_draws_one_level_per_block_antithetically():
    law = law6(6)
    x_0 = all_sequences(K, L)[torch.arange(0, 400, 50)]
    seen = []

    class Spy(BlockOracle):
        def __call__(self, z, sigma, **kw):
            seen.append((sigma, kw.get("x_0")))
            return super().__call__(z, sigma, **kw)

    d = UniformDiffusion(K, block_size=2)
    d.loss(Spy(law, 2), x_0, generator=gen(3))
    sigma, clean = seen[0]
    assert sigma.shape == (8, L) and torch.equal(clean, x_0)
    per_block = sigma.view(8, 3, 2)
    assert torch.equal(per_block[..., 0], per_block[..., 1])
    t = antithetic_times(8, blocks=3, generator=gen(3))
    torch.testing.assert_close(per_block[..., 0], -torch.log(d.schedule.alpha(t)))
    # stratified over batch x blocks: one time in each of the 24 strata
    strata = ((t - 1e-3) / (1 - 1e-3) * 24).floor().flatten().sort().values
    assert torch.equal(strata, torch.arange(24.0))
    # blocks=1 is today's times as a column; AntitheticTimes passes blocks on
    torch.testing.assert_close(antithetic_times(5, blocks=1, generator=gen(1)).squeeze(-1),
                               antithetic_times(5, generator=gen(1)))  # fmt: skip
    assert AntitheticTimes(seed=1)(4, step=2, blocks=3).shape == (4, 3)


def test_the_curriculum_works_per_block():
    law = law6(7)
    x_0 = all_sequences(K, L)[torch.arange(3, 700, 90)]
    seen = []

    class Spy(BlockOracle):
        def __call__(self, z, sigma, **kw):
            seen.append((z, sigma))
            return super().__call__(z, sigma, **kw)

    d = UniformDiffusion(K, curriculum=GaussianCurriculum(end_step=10), block_size=3)
    loss = d.loss(Spy(law, 3), x_0, generator=gen(4))
    relaxed, sigma = seen[0]
    assert relaxed.shape == (8, L, K) and relaxed.is_floating_point()
    schedule = d.curriculum_schedule
    t = antithetic_times(8, blocks=2, generator=gen(4)).repeat_interleave(3, -1)
    alpha, dalpha = schedule.alpha(t), schedule.dalpha_dt(t)
    torch.testing.assert_close(sigma, -torch.log(alpha))  # each block at its own level
    z_t = relaxed.argmax(-1)
    logits = BlockOracle(law, 3)(z_t, sigma, x_0=x_0)
    expected = losses.uniform_nelbo(logits, x_0, z_t, alpha, dalpha)
    torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=1e-5, atol=1e-6)


def test_block_integrand_is_the_process_loss_of_one_training_call():
    law = law6(8)
    x_0 = all_sequences(K, L)[[5, 99]]
    model = BlockOracle(law, 2, masked=True)
    d = MaskedDiffusion(K, block_size=2)
    z = torch.where(torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]]).bool(), K, x_0)
    alpha = torch.tensor([[0.2, 0.2, 0.7, 0.7, 0.5, 0.5]] * 2, dtype=F64)
    da = torch.full_like(alpha, -0.999)
    got = block_integrand(d.process, model, z, x_0, z, alpha, da, None, fused=False, mask=None,
                          reduction="none")  # fmt: skip
    x_hat = model(z, torch.zeros(2, L), x_0=x_0)[..., :K].softmax(-1)
    log_p = x_hat.gather(-1, x_0.unsqueeze(-1)).squeeze(-1).log()
    torch.testing.assert_close(got, torch.where(z == K, da / (1 - alpha) * log_p, 0.0))


class TinyBlockModel(torch.nn.Module):
    """A trainable block model with a fused head: each noisy block reads the summed embeddings
    of the clean blocks before it."""

    block_size, reads_token_levels = 2, True

    def __init__(self) -> None:
        super().__init__()
        self.noisy, self.clean = torch.nn.Embedding(K, 8), torch.nn.Embedding(K, 8)
        self.out = torch.nn.Linear(8, K)

    def hidden_states(self, z_t, sigma, x_0):
        rows, length = x_0.shape
        per_block = self.clean(x_0).view(rows, -1, 2, 8).sum(2)
        before = per_block.cumsum(1) - per_block  # the clean blocks j < i
        context = before.repeat_interleave(2, 1)
        return torch.tanh(self.noisy(z_t) + context + sigma.unsqueeze(-1))

    def output_projection(self):
        return self.out.weight, self.out.bias

    def forward(self, z_t, sigma, x_0):
        return self.out(self.hidden_states(z_t, sigma, x_0))


def test_the_fused_block_loss_is_the_logits_loss():
    model = TinyBlockModel()
    x_0 = torch.randint(0, K, (4, L), generator=gen(12))
    d = UniformDiffusion(K, block_size=2)
    fused = d.loss(model, x_0, generator=gen(1), fused=True, reduction="mean")
    plain = d.loss(model, x_0, generator=gen(1), fused=False, reduction="mean")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    fused.backward()
    assert model.clean.weight.grad.abs().sum() > 0  # the clean copy reaches the loss


@pytest.mark.parametrize("masked", [False, True])
def test_clean_context_keeps_working_inside_blocks(masked):
    law = law6(16)
    seen = []

    class Spy(BlockOracle):
        def __call__(self, z, sigma, **kw):
            seen.append((z, sigma))
            return super().__call__(z, sigma, **kw)

    x_0 = all_sequences(K, L)[torch.arange(10, 700, 100)]
    clean = torch.zeros_like(x_0, dtype=torch.bool)
    clean[:, 1] = clean[:, 4] = True
    d = diffusion(masked, 2)
    loss = d.loss(Spy(law, 2, masked=masked), x_0, clean_mask=clean, generator=gen(2))
    z, sigma = seen[0]
    assert (loss[clean] == 0).all() and (loss[~clean] != 0).any()
    assert torch.equal(z[clean], x_0[clean])
    if not masked:  # the uniform process tells clean context by level 0
        assert (sigma[clean] == 0).all() and (sigma[~clean] > 0).all()
    nelbo = d.nelbo(Spy(law, 2, masked=masked), x_0, clean_mask=clean, generator=gen(3))
    assert (nelbo.total[clean] == 0).all()


def test_block_settings_are_checked_and_round_trip():
    law = law6(0)
    for masked in (False, True):
        d = diffusion(masked, 3)
        assert "block_size=3" in repr(d)
        again = type(d).from_dict(d.to_dict())
        assert again.block_size == 3 and again.to_dict() == d.to_dict()
        assert "block_size" not in diffusion(masked, None).to_dict()  # saved as before
        assert "block_size" not in repr(diffusion(masked, None))
        x_0 = torch.zeros(2, L, dtype=torch.long)
        with pytest.raises(ValueError, match="block_size=2"):
            d.loss(BlockOracle(law, 2, masked=masked), x_0)
        with pytest.raises(ValueError, match="declares no block_size"):
            d.loss(UniformOracle(law), x_0)
        with pytest.raises(ValueError, match="not a multiple of block_size=3"):
            d.nelbo(BlockOracle(law, 3, masked=masked), torch.zeros(2, 4, dtype=torch.long))
        with pytest.raises(ValueError, match=r"\(B, n\)"):
            d.loss(BlockOracle(law, 3, masked=masked), x_0, t=torch.rand(2, 3))
    with pytest.raises(ValueError, match="block_size"):
        UniformDiffusion(K, block_size=0)


# ---------------------------------------------------------------------------------------------
# The block sampler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_cached_sampling_is_uncached_sampling_token_for_token(masked, b):
    law = law6(9)
    d = diffusion(masked, b)
    prompt = torch.tensor([[1, 0, 2, 1]] * 6)[:, : b + 1]  # a whole block and a partial one
    for kw in ({"tail": "none"}, {"tail": "greedy", "prompt": prompt, "eos_id": 0}):
        runs = [d.sample(BlockOracle(law, b, masked=masked), 6, 14, 5, seed=3, kv_cache=cache,
                         **kw) for cache in (True, False)]  # fmt: skip
        assert torch.equal(runs[0], runs[1])


def test_cached_equals_uncached_with_the_other_parts_too():
    """Time-conditioned masked steps with ReMDM remasking and nucleus filtering; Ψ steps with
    top-k, the MAP tail and a partial prompt block: the parts compose inside each block."""
    law = law6(17)
    masked = MaskedDiffusion(K, block_size=3, time_conditioned=True)
    kw = {"seed": 2, "remask": CappedRemask(masked.schedule, 0.1), "top_p": 0.9}
    runs = [masked.sample(BlockOracle(law, 3, masked=True), 5, 9, 6, kv_cache=c, **kw)
            for c in (True, False)]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    uniform = UniformDiffusion(K, block_size=3)
    kw = {
        "seed": 2,
        "kappa": 0.5,
        "top_k": 2,
        "tail": "map",
        "prompt": torch.tensor([[1, 2, 0, 1]] * 5),
    }
    runs = [uniform.sample(BlockOracle(law, 3), 5, 9, 6, kv_cache=c, **kw) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_the_sampled_law_is_the_exact_chain_and_near_the_model_law(masked, b):
    law = law6(10)
    d = diffusion(masked, b)
    oracle = BlockOracle(law, b, masked=masked)
    tv = total_variation(block_chain(oracle, TimeGrid.build(d.schedule, 64, tail="none")), law)
    assert tv < TV_64, tv
    chain8 = block_chain(oracle, TimeGrid.build(d.schedule, 8, tail="none"))
    if b == 1:  # one token per block: exact at any step count (up to the uniform prior at
        assert max(tv, total_variation(chain8, law)) < 1e-6  # alpha_1 = eps, not 0)
    else:  # the factorisation error of a step's independent draws shrinks with the steps
        assert total_variation(chain8, law) > tv
    x = d.sample(oracle, 4000, L, 8, tail="none", generator=gen(11 + b))
    assert chi_square_p(sequence_ids(x, K), chain8) > P_MIN


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("given", [[2], [2, 0], [2, 0, 1]])
def test_prompts_sample_the_conditional_law(masked, given):
    law = law6(11)
    d = diffusion(masked, 2)
    oracle = BlockOracle(law, 2, masked=masked)
    prompt = torch.tensor(given)
    mask = torch.arange(L) < len(given)
    target = conditional(law, torch.cat([prompt, torch.zeros(L - len(given), dtype=torch.long)]),
                         mask)  # fmt: skip
    chain64 = block_chain(oracle, TimeGrid.build(d.schedule, 64, tail="none"), prompt)
    assert total_variation(chain64, target) < TV_64
    chain8 = block_chain(oracle, TimeGrid.build(d.schedule, 8, tail="none"), prompt)
    x = d.sample(oracle, 3000, L, 8, tail="none", prompt=prompt.expand(3000, -1),
                 generator=gen(len(given)))  # fmt: skip
    assert torch.equal(x[:, : len(given)], prompt.expand(3000, -1))
    assert chi_square_p(sequence_ids(x[:, len(given) :], K), chain8) > P_MIN


@pytest.mark.parametrize("masked", [False, True])
def test_rows_stop_at_eos_and_pad(masked):
    law = law6(12)
    d = diffusion(masked, 2)
    records: list[StepRecord] = []
    kw = {"seed": 5, "tail": "greedy", "window": 6}
    free = d.sample(BlockOracle(law, 2, masked=masked), 8, 40, 3, **kw)
    x = d.sample(BlockOracle(law, 2, masked=masked), 8, 40, 3, eos_id=0,
                 callback=records.append, **kw)  # fmt: skip
    first = torch.where(x == 0, torch.arange(40), 40).amin(-1)
    assert (first < 40).all()  # every row met EOS (the test's premise)
    for row in range(8):
        f = int(first[row])
        assert torch.equal(x[row, : f + 1], free[row, : f + 1])  # same draws up to EOS
        assert (x[row, f:] == 0).all()  # padding after it
    last_block = int(first.amax()) // 2  # the batch stopped once every row was done
    assert max(r.block for r in records) == last_block


def test_nfe_per_block_and_step_records_name_the_block():
    law = law6(13)
    records: list[StepRecord] = []
    oracle = BlockOracle(law, 2)
    UniformDiffusion(K, block_size=2).sample(oracle, 3, L, 4, seed=1, callback=records.append)
    assert [r.block for r in records] == [0] * 5 + [1] * 5 + [2] * 5
    assert [r.step for r in records] == list(range(5)) * 3
    assert [r.nfe for r in records] == list(range(1, 16)) and oracle.calls == 15
    assert records[0].z_s.shape == (3, 2) and records[0].logits.shape == (3, 2, K)
    assert oracle.prefills == 2  # the finished blocks 0 and 1, appended once each
    assert StepRecord(0, 1.0, 0.5, records[0].z_s, records[0].logits, 1).block == 0


@pytest.mark.parametrize("masked", [False, True])
def test_the_window_slides_and_stays_within_the_training_length(masked):
    law = law6(14)
    seen: list[torch.Tensor] = []

    class Spy(BlockOracle):
        def block_logits(self, prefix, z, sigma):
            seen.append(prefix)
            return super().block_logits(prefix, z, sigma)

    d = diffusion(masked, 2)
    outs = []
    for cache in (True, False):
        spy = Spy(law, 2, masked=masked)
        outs.append(d.sample(spy, 4, 15, 3, seed=2, kv_cache=cache, tail="none"))
        assert spy.positions <= L  # never past the L = 6 positions the model knows
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (4, 15)
    # the cached run's blocks 3.. read the last window - b = 4 clean tokens
    cached = seen[: len(seen) // 2]
    per_block = 3  # steps per block, no tail
    for k in range(8):
        prefix = cached[k * per_block]
        start = max(0, 2 * k - 4)
        assert torch.equal(prefix, outs[0][:, start : 2 * k]), k


def test_block_sampling_errors_name_the_fix():
    law = law6(0)
    d = UniformDiffusion(K, block_size=2)
    with pytest.raises(ValueError, match="declares no block_size"):
        d.sample(UniformOracle(law), 2, L, 2)
    with pytest.raises(ValueError, match="multiple of block_size"):
        d.sample(BlockOracle(law, 2), 2, L, 2, window=5)
    with pytest.raises(ValueError, match="length counts the prompt"):
        d.sample(BlockOracle(law, 2), 2, 3, 2, prompt=torch.zeros(2, 3, dtype=torch.long))

    class NoCache:
        block_size, reads_token_levels = 2, True

        def __call__(self, z, sigma, **kw):
            return torch.zeros(*z.shape, K)

    with pytest.raises(ValueError, match="kv_cache=False"):
        d.sample(NoCache(), 2, L, 2)
    assert d.sample(NoCache(), 2, L, 2, kv_cache=False, seed=0).shape == (2, L)
    with pytest.raises(ValueError, match="eos_id"):
        MaskedDiffusion(K, block_size=2).sample(BlockOracle(law, 2, masked=True), 2, L, 2,
                                                eos_id=K)  # fmt: skip


def test_guidance_keeps_one_cache_per_conditioning():
    law = law6(15)
    calls: list[tuple[int, object]] = []

    class Conditioned(BlockOracle):
        def __call__(self, z, sigma, label=None, kv_cache=None, **kw):
            calls.append((id(kv_cache), label))
            return super().__call__(z, sigma, kv_cache=kv_cache, **kw)

        def prefill(self, x, cache, label=None):
            super().prefill(x, cache)

    d = UniformDiffusion(K, block_size=2)
    kw = {"cond": {"label": 1}, "guidance_scale": 1.5, "uncond": {"label": 0}, "seed": 4}
    runs = [d.sample(Conditioned(law, 2), 3, L, 2, kv_cache=c, **kw) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    cached = [c for c in calls if c[0] != id(None)]
    by_label = {label: {cache for cache, lab in cached if lab == label} for label in (0, 1)}
    assert len(by_label[0]) == len(by_label[1]) == 1 and by_label[0] != by_label[1]


def test_readme_block_snippet_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.findall(r"<!-- snippet: blocks -->\s*```python\n(.*?)```", text, re.S)
    assert len(code) == 1, "README must hold exactly one blocks snippet"
    namespace: dict = {}
    exec(compile(code[0], "README.md", "exec"), namespace)
    assert namespace["tokens"].shape == (4, 12)
    assert math.isfinite(namespace["loss"].item())


# ---------------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------------


def _report() -> None:  # pragma: no cover - a measurement, run by hand
    """Print the figures the bounds above rest on."""
    law = law6(10)
    for masked in (False, True):
        name = "masked" if masked else "uniform"
        for b in (1, 2, 3):
            d = diffusion(masked, b)
            oracle = BlockOracle(law, b, masked=masked)
            tvs = [total_variation(block_chain(oracle, TimeGrid.build(d.schedule, n, tail="none")),
                                   law) for n in (8, 16, 64)]  # fmt: skip
            print(
                f"{name} b={b}, K={K} L={L}, tail none: exact TV(sampled law, model law) at "
                f"8 / 16 / 64 steps per block: {tvs[0]:.5f} / {tvs[1]:.5f} / {tvs[2]:.3g}"
            )
    x_0 = all_sequences(K, L)[torch.randint(0, K**L, (16,), generator=gen(1))]
    for masked in (False, True):
        model = BlockOracle(law6(3), L, masked=masked)
        a = diffusion(masked, None).nelbo(model, x_0, generator=gen(7)).total
        b = diffusion(masked, L).nelbo(model, x_0, generator=gen(7)).total
        print(
            f"{'masked' if masked else 'uniform'}: block NELBO at b = L minus today's NELBO, "
            f"same draws: max |diff| {float((a - b).abs().max()):.3g}"
        )
    law4 = law6(4)
    x = all_sequences(K, L)[torch.randint(0, K**L, (12,), generator=gen(2))]
    exact = exact_block_nelbo(MaskedDiffusion(K, schedule=Linear(), block_size=1),
                              BlockOracle(law4, 1, masked=True), x, nodes=24)  # fmt: skip
    print(
        f"masked b=1, level-blind exact denoiser: max |NELBO - AR NLL| "
        f"{float((exact - ar_nll(law4, x)).abs().max()):.3g} (float64)"
    )
    law2 = random_law(2, L, 6)
    nll = -torch.log(law2.reshape(-1))
    for masked in (False, True):
        for b in (1, 2, 3):
            process = MaskedDiffusion if masked else UniformDiffusion
            for eps in (1e-3, 1e-5):
                d = process(2, schedule=Linear(), eps=eps, block_size=b)
                e = exact_block_nelbo(d, BlockOracle(law2, b, masked=masked), all_sequences(2, L))
                gap = float((law2.reshape(-1) * (e - nll)).sum())
                print(
                    f"{process.__name__} b={b} eps={eps:g}, K=2 L=6: E_p[NELBO] - H(p) "
                    f"{gap:.3g}, min_x NELBO(x) + log p(x) {float((e - nll).min()):.3g}"
                )
    d = UniformDiffusion(K, block_size=2)
    same = [torch.equal(*[d.sample(BlockOracle(law, 2), 64, 20, 8, seed=s, kv_cache=c)
                          for c in (True, False)]) for s in range(5)]  # fmt: skip
    print(f"uniform b=2, 20 tokens (window 6), 5 seeds x 64 rows: cached == uncached {all(same)}")


if __name__ == "__main__":  # pragma: no cover
    _report()
