"""discdiff.samplers.loops: the time grids and their tails (NFE, the t_min call), what the
denoiser and the callback see, caching, prompts, the diffusion objects' ``sample`` forwarding,
and errors that name the argument."""

from __future__ import annotations

import math

import pytest
import torch

from discdiff.diffusion import MaskedDiffusion, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.samplers import (
    T_MIN,
    CappedKappa,
    CappedRemask,
    ConstantKappa,
    StepRecord,
    TimeGrid,
    map_tail,
    masked_loop,
    nfe,
    sample_masked,
    sample_uniform,
    uniform_loop,
)
from discdiff.schedules import LogLinearSchedule
from tests.test_samplers_laws import SCHEDULE, alpha, gen


class CountingDenoiser:
    """A deterministic denoiser that depends on every input token (and optionally on sigma);
    records each call's input, sigma and conditioning."""

    def __init__(self, vocab_size: int, use_sigma: bool = False):
        self.table = torch.randn(vocab_size, vocab_size, generator=gen(99))
        self.use_sigma = use_sigma
        self.inputs: list[torch.Tensor] = []
        self.sigmas: list[torch.Tensor] = []
        self.cond: list[dict] = []

    @property
    def calls(self) -> int:
        return len(self.inputs)

    def logits(self, z_t, sigma):
        mixed = self.table[z_t] + 0.3 * self.table[z_t.roll(1, -1)]
        return mixed + (sigma.view(-1, 1, 1) if self.use_sigma else 0)

    def __call__(self, z_t, sigma, **cond):
        self.inputs.append(z_t.clone())
        self.sigmas.append(sigma.clone())
        self.cond.append(cond)
        return self.logits(z_t, sigma)


def sigma_at(t: float, b: int) -> torch.Tensor:
    """What the denoiser sees at time t: -log alpha_t as float32 (B,)."""
    return torch.full((b,), -math.log(alpha(t)), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Grids and NFE
# ---------------------------------------------------------------------------------------------


def test_time_grids_end_where_the_tail_needs_them():
    for tail in ("greedy", "map"):
        grid = TimeGrid.build(SCHEDULE, 4, tail=tail)
        assert grid.steps == 4 and len(grid.t) == len(grid.alpha) == 5
        expected = torch.linspace(1, T_MIN, 5, dtype=torch.float64).tolist()
        assert grid.t == tuple(expected) and grid.t[-1] == T_MIN == 1e-5
        assert grid.alpha == tuple(alpha(t) for t in expected)
    grid = TimeGrid.build(SCHEDULE, 4, tail="none")
    assert grid.t == (1.0, 0.75, 0.5, 0.25, 0.0) and grid.alpha[-1] == 1.0  # exactly clean
    assert TimeGrid.build(SCHEDULE, 2).t[-1] == T_MIN  # the paper's protocol by default
    assert TimeGrid.build(SCHEDULE, 2, t_min=0.01).t == (1.0, 0.505, 0.01)
    for times in ([1, 0.75, 0.5, 0.25, 0], (1.0, 0.75, 0.5, 0.25, 0.0),
                  torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])):  # fmt: skip
        assert TimeGrid.build(SCHEDULE, 4, times=times) == grid


def test_nfe_counts_the_tail_call():
    for steps in (1, 8, 64):
        assert nfe(steps, "greedy") == nfe(steps, "map") == steps + 1
        assert nfe(steps, "none") == steps


@pytest.mark.parametrize("tail", ["greedy", "map", "none"])
def test_the_tail_makes_one_more_call_at_t_min(tail):
    """greedy / map: N steps on linspace(1, t_min, N + 1), then one call at t_min (N + 1 calls),
    the last at sigma = -log alpha(t_min); none: N calls on linspace(1, 0, N + 1), ending at
    t = 0. StepRecord.nfe counts, nfe(steps, tail) agrees, and the output is the tail's."""
    b, length, k, steps = 3, 6, 7, 4
    den = CountingDenoiser(k, use_sigma=True)
    records: list[StepRecord] = []
    x = sample_uniform(
        den, b, length, steps, schedule=SCHEDULE, vocab_size=k, tail=tail,
        callback=records.append, generator=gen(1),
    )  # fmt: skip
    assert den.calls == len(records) == nfe(steps, tail)
    assert [r.nfe for r in records] == list(range(1, den.calls + 1))
    assert [r.step for r in records] == list(range(den.calls))
    end = 0.0 if tail == "none" else T_MIN
    times = torch.linspace(1, end, steps + 1, dtype=torch.float64).tolist()
    assert [r.t for r in records[:steps]] == times[:-1]
    assert [r.s for r in records[:steps]] == times[1:]
    called_at = times if tail != "none" else times[:-1]
    for sigma, t in zip(den.sigmas, called_at, strict=True):
        assert sigma.dtype == torch.float32 and sigma.shape == (b,)
        torch.testing.assert_close(sigma, sigma_at(t, b))
    for record, z_in in zip(records[:-1], den.inputs[1:], strict=True):
        assert torch.equal(record.z_s, z_in)  # each call sees the previous step's tokens
    last = records[-1]
    assert torch.equal(last.z_s, x) and last.s == 0.0
    if tail == "none":
        assert last.t == times[-2]
        return
    assert last.t == T_MIN and last.step == steps
    torch.testing.assert_close(den.sigmas[-1], torch.full((b,), -math.log(alpha(T_MIN))))
    z_min = records[-2].z_s
    assert torch.equal(last.logits, den.logits(z_min, den.sigmas[-1]))
    if tail == "greedy":
        assert torch.equal(x, last.logits.argmax(-1))
    else:
        assert torch.equal(x, map_tail(last.logits, z_min, alpha(T_MIN)))


@pytest.mark.parametrize("tail", ["greedy", "map"])
def test_the_masked_tail_fills_exactly_the_still_masked_positions(tail):
    # A grid that stops at t = 0.3 leaves many masks for the tail call there.
    b, length, k, mask = 4, 16, 6, 5
    den = CountingDenoiser(k, use_sigma=True)
    records: list[StepRecord] = []
    x = sample_masked(
        den, b, length, 2, schedule=SCHEDULE, vocab_size=k, mask_id=mask, tail=tail,
        time_grid=[1.0, 0.6, 0.3], time_conditioned=True, callback=records.append,
        generator=gen(2),
    )  # fmt: skip
    assert den.calls == 3 == records[-1].nfe
    torch.testing.assert_close(den.sigmas[-1], sigma_at(0.3, b))
    before = records[-2].z_s
    still = before == mask
    assert 0 < int(still.sum()) < still.numel()
    assert torch.equal(x[~still], before[~still])  # unmasked tokens are kept
    filled = den.logits(before, den.sigmas[-1])[..., :mask].argmax(-1)
    assert torch.equal(x[still], filled[still])  # masks get argmax x_hat, the mask left out
    assert bool((x != mask).all())


def test_masked_tail_call_at_t_min_and_no_tail():
    b, length, k, mask, steps = 2, 8, 6, 5, 3
    den = CountingDenoiser(k, use_sigma=True)
    sample_masked(den, b, length, steps, schedule=SCHEDULE, vocab_size=k, mask_id=mask,
                  time_conditioned=True, generator=gen(3))  # fmt: skip
    assert den.calls == nfe(steps, "greedy")
    torch.testing.assert_close(den.sigmas[-1], sigma_at(T_MIN, b))
    den = CountingDenoiser(k, use_sigma=True)
    x = sample_masked(den, b, length, steps, schedule=SCHEDULE, vocab_size=k, mask_id=mask,
                      time_conditioned=True, tail="none", generator=gen(3))  # fmt: skip
    assert den.calls == steps and bool((x != mask).all())  # t = 0 unmasks every token


def test_cached_masked_sampler_equals_uncached():
    kwargs = dict(schedule=SCHEDULE, vocab_size=6, mask_id=5, top_k=4)
    cached, uncached = CountingDenoiser(6), CountingDenoiser(6)
    records: list[StepRecord] = []
    a = sample_masked(cached, 3, 5, 64, cache=True, callback=records.append, generator=gen(18),
                      **kwargs)  # fmt: skip
    b = sample_masked(uncached, 3, 5, 64, cache=False, generator=gen(18), **kwargs)
    assert torch.equal(a, b)
    assert uncached.calls == nfe(64, "greedy") and cached.calls < 64
    assert records[-1].nfe == cached.calls  # StepRecord.nfe counts the real calls
    remask = CappedRemask(SCHEDULE, 0.05)
    c = sample_masked(CountingDenoiser(6), 3, 5, 64, remask=remask, generator=gen(19), **kwargs)
    d = sample_masked(
        CountingDenoiser(6), 3, 5, 64, remask=remask, cache=False, generator=gen(19), **kwargs
    )
    assert torch.equal(c, d)
    for tail in ("none", "map"):
        e = sample_masked(CountingDenoiser(6), 3, 5, 16, tail=tail, generator=gen(20), **kwargs)
        f = sample_masked(CountingDenoiser(6), 3, 5, 16, tail=tail, cache=False,
                          generator=gen(20), **kwargs)  # fmt: skip
        assert torch.equal(e, f)


def test_psi_sampler_with_kappa_one_equals_ancestral():
    kwargs = dict(schedule=SCHEDULE, vocab_size=7, top_p=0.9)
    den = CountingDenoiser(7, use_sigma=True)
    a = sample_uniform(den, 3, 8, 12, generator=gen(20), **kwargs)
    for kappa in (ConstantKappa(1.0), 1.0, 1, lambda t, s: 1):
        b = sample_uniform(den, 3, 8, 12, kappa=kappa, generator=gen(20), **kwargs)
        assert torch.equal(a, b)
    d = sample_uniform(den, 3, 8, 12, kappa=CappedKappa(SCHEDULE, 0.1), generator=gen(20), **kwargs)
    assert d.shape == (3, 8)
    assert not torch.equal(
        sample_uniform(den, 64, 8, 12, kappa=0.0, generator=gen(21), **kwargs),
        sample_uniform(den, 64, 8, 12, generator=gen(21), **kwargs),
    )  # kappa < 1 does change the samples


def test_greedy_tail_returns_the_argmax_of_the_t_min_call():
    den = CountingDenoiser(11)
    x = sample_uniform(den, 4, 9, 1, schedule=SCHEDULE, vocab_size=11, generator=gen(21))
    assert den.calls == 2
    assert torch.equal(x, den.logits(den.inputs[-1], torch.zeros(4)).argmax(-1))
    # masked: the tail fills every remaining mask with the argmax over the real classes
    den = CountingDenoiser(11)
    x = sample_masked(den, 4, 9, 1, schedule=SCHEDULE, vocab_size=11, mask_id=10,
                      cache=False, generator=gen(0))  # fmt: skip
    z_min = den.inputs[-1]
    expected = torch.where(z_min == 10, den.logits(z_min, torch.zeros(4))[..., :10].argmax(-1),
                           z_min)  # fmt: skip
    assert den.calls == 2 and torch.equal(x, expected)


# ---------------------------------------------------------------------------------------------
# Plumbing: the callback, cond, sigma, the loops under the samplers
# ---------------------------------------------------------------------------------------------


def test_sampler_plumbing():
    den = CountingDenoiser(5, use_sigma=True)
    seen = []
    grid = [0.9, 0.5, 0.2, 0.0]
    label = torch.ones(2)

    def callback(record: StepRecord) -> None:
        assert record.logits.shape == (2, 3, 5) and record.z_s.dtype == torch.long
        seen.append((record.step, record.t, record.s, tuple(record.z_s.shape), record.nfe))

    x = sample_uniform(
        den, 2, 3, 3, schedule=SCHEDULE, vocab_size=5, time_grid=grid, tail="none",
        callback=callback, progress=True, generator=gen(22), cond={"label": label},
    )  # fmt: skip
    assert x.shape == (2, 3) and x.dtype == torch.long
    assert seen == [(0, 0.9, 0.5, (2, 3), 1), (1, 0.5, 0.2, (2, 3), 2), (2, 0.2, 0.0, (2, 3), 3)]
    assert den.calls == 3 and all(c == {"label": label} for c in den.cond)
    same = sample_uniform(
        den, 2, 3, 3, schedule=SCHEDULE, vocab_size=5, time_grid=grid, tail="none",
        generator=gen(22), cond={"label": label},
    )  # fmt: skip
    assert torch.equal(x, same)
    # with the default greedy tail the same grid makes a fourth call, at its last time (t = 0)
    den = CountingDenoiser(5, use_sigma=True)
    sample_uniform(den, 2, 3, 3, schedule=SCHEDULE, vocab_size=5, time_grid=grid,
                   generator=gen(22))  # fmt: skip
    assert den.calls == 4 and bool((den.sigmas[-1] == 0).all())

    sigmas = []
    record = lambda z, sigma: (sigmas.append(sigma), torch.zeros(*z.shape, 5))[1]
    sample_uniform(record, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, generator=gen(23))
    assert len(sigmas) == 3 and sigmas[0].shape == (2,) and sigmas[0].dtype == torch.float32
    for sigma, t in zip(sigmas, (1.0, (1 + T_MIN) / 2, T_MIN), strict=True):
        torch.testing.assert_close(sigma, sigma_at(t, 2))
    sigmas.clear()
    sample_masked(record, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, mask_id=4, cache=False,
                  generator=gen(24))  # fmt: skip
    assert len(sigmas) == 3 and all(bool((s == 0).all()) for s in sigmas)  # not time-conditioned
    sigmas.clear()
    sample_masked(record, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, mask_id=4,
                  time_conditioned=True, generator=gen(24))  # fmt: skip
    torch.testing.assert_close(sigmas[0], sigma_at(1.0, 2))
    torch.testing.assert_close(sigmas[-1], sigma_at(T_MIN, 2))


@pytest.mark.parametrize("tail", ["greedy", "map", "none"])
def test_the_loops_are_the_samplers_given_z_1_and_a_grid(tail):
    k, b, length, steps = 6, 3, 5, 5
    den = CountingDenoiser(k, use_sigma=True)
    grid = TimeGrid.build(SCHEDULE, steps, tail=tail)
    g = gen(30)
    z_1 = torch.randint(0, k, (b, length), generator=g)
    looped = uniform_loop(den, z_1, grid, vocab_size=k, tail=tail, kappa=0.5, generator=g)
    sampled = sample_uniform(den, b, length, steps, schedule=SCHEDULE, vocab_size=k, tail=tail,
                             kappa=0.5, generator=gen(30))  # fmt: skip
    assert torch.equal(looped, sampled)
    mask = k - 1
    z_1 = torch.full((b, length), mask)
    looped = masked_loop(den, z_1, grid, vocab_size=k, mask_id=mask, tail=tail, generator=gen(31))
    sampled = sample_masked(den, b, length, steps, schedule=SCHEDULE, vocab_size=k,
                            mask_id=mask, tail=tail, generator=gen(31))  # fmt: skip
    assert torch.equal(looped, sampled)


class TokenLevelDenoiser(CountingDenoiser):
    """Reads per-token levels sigma (B, L)."""

    reads_token_levels = True

    def logits(self, z_t, sigma):
        assert sigma.shape == z_t.shape
        return super().logits(z_t, sigma.amax(-1))


@pytest.mark.parametrize("guided", [False, True])
def test_a_prompt_reaches_a_token_level_denoiser_as_level_zero(guided):
    k, b, length, steps = 6, 3, 5, 4
    prompt = torch.randint(0, k, (b, length), generator=gen(42))
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, 0] = mask[1, 3] = True
    den = TokenLevelDenoiser(k)
    guidance = {"guidance_scale": 2.0, "uncond": {}} if guided else {}
    sample_uniform(den, b, length, steps, schedule=SCHEDULE, vocab_size=k, prompt=prompt,
                   prompt_mask=mask, generator=gen(43), **guidance)  # fmt: skip
    grid = TimeGrid.build(SCHEDULE, steps, tail="greedy")
    assert den.calls == (steps + 1) * (2 if guided else 1)
    for i, sigma in enumerate(den.sigmas):
        t = grid.t[i // (2 if guided else 1)]
        want = torch.where(mask, 0.0, sigma_at(t, b).unsqueeze(-1))
        torch.testing.assert_close(sigma, want)


def test_prompts_hold_their_tokens_in_every_record():
    k, b, length = 6, 4, 7
    prompt = torch.randint(0, k - 1, (b, length), generator=gen(40))
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, :2] = True
    mask[:, -1] = True  # a prefix and a suffix: infilling
    mask[0, 3] = True  # and a per-row position

    def check(record: StepRecord) -> None:
        assert torch.equal(record.z_s[mask], prompt[mask])

    for tail in ("greedy", "map", "none"):
        den = CountingDenoiser(k)
        x = sample_uniform(
            den,
            b,
            length,
            6,
            schedule=SCHEDULE,
            vocab_size=k,
            tail=tail,
            prompt=prompt,
            prompt_mask=mask,
            clamp_prompt=True,  # a denoiser without per-token levels: the opt-in approximation
            callback=check,
            generator=gen(41),
        )
        assert torch.equal(x[mask], prompt[mask])
        assert all(torch.equal(z[mask], prompt[mask]) for z in den.inputs)  # z_1 holds it too
        den = CountingDenoiser(k)
        x = sample_masked(den, b, length, 6, schedule=SCHEDULE, vocab_size=k, mask_id=k - 1,
                          tail=tail, prompt=prompt, prompt_mask=mask, callback=check,
                          generator=gen(42))  # fmt: skip
        assert torch.equal(x[mask], prompt[mask]) and bool((x != k - 1).all())
        assert all(torch.equal(z[mask], prompt[mask]) for z in den.inputs)
    # no prompt_mask: the whole prompt is given
    x = sample_uniform(CountingDenoiser(k), b, length, 3, schedule=SCHEDULE, vocab_size=k,
                       prompt=prompt, clamp_prompt=True, generator=gen(43))  # fmt: skip
    assert torch.equal(x, prompt)


def test_diffusion_objects_forward_the_sampler_options():
    k, b, length, steps = 6, 3, 5, 4
    den = CountingDenoiser(k, use_sigma=True)
    options = dict(tail="map", kappa=0.7, top_k=4, top_p=0.95, cond={"label": 1})
    uniform = UniformDiffusion(k)
    got = uniform.sample(den, b, length, steps, generator=gen(50), **options)
    expected = sample_uniform(den, b, length, steps, schedule=uniform.schedule, vocab_size=k,
                              generator=gen(50), **options)  # fmt: skip
    assert torch.equal(got, expected)
    masked = MaskedDiffusion(k - 1)  # the model's K counts the mask token
    options = dict(tail="none", top_k=3, remask=CappedRemask(masked.schedule, 0.1))
    got = masked.sample(den, b, length, steps, generator=gen(51), **options)
    expected = sample_masked(den, b, length, steps, schedule=masked.schedule, vocab_size=k,
                             mask_id=masked.mask_id, generator=gen(51), **options)  # fmt: skip
    assert torch.equal(got, expected)
    distiller = DCDistiller(den, k)
    got = distiller.sample(den, b, length, steps, tail="greedy", generator=gen(52))
    expected = sample_uniform(den, b, length, steps, schedule=LogLinearSchedule(), vocab_size=k,
                              tail="greedy", generator=gen(52))  # fmt: skip
    assert torch.equal(got, expected)


def test_option_types_that_must_work():
    den = CountingDenoiser(5, use_sigma=True)
    common = dict(schedule=SCHEDULE, vocab_size=5)
    ints = sample_uniform(den, 2, 3, 4, time_grid=[1, 0.75, 0.5, 0.25, 0], generator=gen(60),
                          **common)  # fmt: skip
    floats = sample_uniform(den, 2, 3, 4, time_grid=[1.0, 0.75, 0.5, 0.25, 0.0],
                            generator=gen(60), **common)  # fmt: skip
    assert torch.equal(ints, floats)
    masked = sample_masked(den, 2, 3, 4, time_grid=[1, 0.75, 0.5, 0.25, 0], mask_id=4,
                           generator=gen(61), **common)  # fmt: skip
    assert masked.shape == (2, 3)
    for option, value, same_as in (("kappa", 1, 1.0), ("top_p", 1, 1.0), ("kappa", 0, 0.0)):
        a = sample_uniform(den, 2, 3, 4, generator=gen(62), **{option: value}, **common)
        b = sample_uniform(den, 2, 3, 4, generator=gen(62), **{option: same_as}, **common)
        assert torch.equal(a, b), option
    a = sample_masked(den, 2, 3, 4, mask_id=4, top_p=1, generator=gen(63), **common)
    b = sample_masked(den, 2, 3, 4, mask_id=4, generator=gen(63), **common)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    den = CountingDenoiser(5)
    common = dict(schedule=SCHEDULE, vocab_size=5)
    for steps in (0, -1):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            sample_uniform(den, 2, 3, steps, **common)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_uniform(den, 2, 3, 2, time_grid=[1.0, 1.0, 0.0], **common)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_masked(den, 2, 3, 2, time_grid=[0.0, 0.5, 1.0], mask_id=4, **common)
    with pytest.raises(ValueError, match="steps \\+ 1"):
        sample_uniform(den, 2, 3, 3, time_grid=[1.0, 0.0], **common)
    with pytest.raises(ValueError, match="time_grid"):
        sample_uniform(den, 2, 3, 1, time_grid=[1.5, 0.0], **common)
    with pytest.raises(ValueError, match="time_grid"):
        sample_uniform(den, 2, 3, 1, time_grid="fast", **common)
    with pytest.raises(ValueError, match="t_min"):
        TimeGrid.build(SCHEDULE, 2, t_min=0.0)
    with pytest.raises(ValueError, match="denoiser returned"):
        sample_uniform(lambda z, s: torch.zeros(2, 3, 4), 2, 3, 2, **common)
    with pytest.raises(ValueError, match="denoiser returned"):
        sample_masked(lambda z, s: torch.zeros(2, 3), 2, 3, 2, mask_id=4, **common)
    nan = lambda z, s: torch.full((*z.shape, 5), float("nan"))
    for tail in ("greedy", "map", "none"):
        with pytest.raises(ValueError, match="denoiser returned.*NaN"):
            sample_uniform(nan, 2, 3, 1, tail=tail, **common)
        with pytest.raises(ValueError, match="denoiser returned.*NaN"):
            sample_masked(nan, 2, 3, 1, mask_id=4, tail=tail, **common)
    with pytest.raises(ValueError, match="cache"):
        sample_masked(den, 2, 3, 2, mask_id=4, cache=True, time_conditioned=True, **common)
    with pytest.raises(ValueError, match="kappa"):
        sample_uniform(den, 2, 3, 2, kappa=lambda t, s: 1.5, **common)
    with pytest.raises(ValueError, match="kappa"):
        sample_uniform(den, 2, 3, 2, kappa=1.5, **common)
    with pytest.raises(ValueError, match="sigma_max"):
        sample_masked(den, 2, 3, 4, mask_id=4, remask=lambda t, s: 1.0, **common)
    with pytest.raises(ValueError, match="remask"):
        sample_masked(den, 2, 3, 4, mask_id=4, remask=lambda t, s: -0.5, **common)
    with pytest.raises(ValueError, match="mask_id"):
        sample_masked(den, 2, 3, 2, mask_id=5, **common)
    with pytest.raises(ValueError, match="top_p"):
        sample_uniform(den, 2, 3, 2, top_p=0.0, **common)
    with pytest.raises(ValueError, match="top_k"):
        sample_uniform(den, 2, 3, 2, top_k=0, **common)
    with pytest.raises(ValueError, match="vocab_size"):
        sample_uniform(den, 2, 3, 2, schedule=SCHEDULE, vocab_size=1)
    for sampler, extra in ((sample_uniform, {}), (sample_masked, {"mask_id": 4})):
        with pytest.raises(ValueError, match="tail"):
            sampler(den, 2, 3, 2, tail="argmax", **extra, **common)
        with pytest.raises(ValueError, match="tail"):
            sampler(den, 2, 3, 2, tail=None, **extra, **common)


def test_bad_prompts_name_the_argument():
    den = CountingDenoiser(5)
    common = dict(schedule=SCHEDULE, vocab_size=5)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for sampler, extra in ((sample_uniform, {}), (sample_masked, {"mask_id": 4})):
        kw = dict(**extra, **common)
        with pytest.raises(ValueError, match="prompt must be"):
            sampler(den, 2, 3, 2, prompt=torch.zeros(2, 4, dtype=torch.long), **kw)
        with pytest.raises(ValueError, match="prompt must be"):
            sampler(den, 2, 3, 2, prompt=torch.zeros(3, dtype=torch.long), **kw)
        with pytest.raises(TypeError, match="prompt"):
            sampler(den, 2, 3, 2, prompt=torch.zeros(2, 3), **kw)
        with pytest.raises(ValueError, match="prompt"):
            sampler(den, 2, 3, 2, prompt=torch.full((2, 3), 5), **kw)
        with pytest.raises(ValueError, match="prompt"):
            sampler(den, 2, 3, 2, prompt=torch.full((2, 3), -1), **kw)
        with pytest.raises(ValueError, match="prompt_mask needs prompt"):
            sampler(den, 2, 3, 2, prompt_mask=mask, **kw)
        with pytest.raises(ValueError, match="prompt_mask"):
            sampler(den, 2, 3, 2, prompt=prompt, prompt_mask=mask.long(), **kw)
        with pytest.raises(ValueError, match="prompt_mask"):
            sampler(den, 2, 3, 2, prompt=prompt, prompt_mask=mask[:, :2], **kw)
    with pytest.raises(ValueError, match="mask token"):
        sample_masked(den, 2, 3, 2, mask_id=4, prompt=torch.full((2, 3), 4), **common)
    # the mask id is fine outside the prompt's positions
    x = sample_masked(den, 2, 3, 2, mask_id=4, prompt=torch.full((2, 3), 4),
                      prompt_mask=torch.zeros(2, 3, dtype=torch.bool), **common)  # fmt: skip
    assert bool((x != 4).all())


def test_a_typo_in_an_option_is_a_type_error():
    den = CountingDenoiser(5)
    calls = (
        lambda: sample_uniform(den, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, topp=0.9),
        lambda: sample_masked(den, 2, 3, 2, schedule=SCHEDULE, vocab_size=5, mask_id=4, topp=0.9),
        lambda: UniformDiffusion(5).sample(den, 2, 3, 2, topp=0.9),
        lambda: MaskedDiffusion(4).sample(den, 2, 3, 2, topp=0.9),
        lambda: DCDistiller(den, 5).sample(den, 2, 3, 2, topp=0.9),
        lambda: UniformDiffusion(5).sample(den, 2, 3, 2, greedy_tail=False),  # the old option
        lambda: UniformDiffusion(5).sample(den, 2, 3, 2, label=1),  # conditioning goes in cond=
    )
    for call in calls:
        with pytest.raises(TypeError):
            call()
    assert den.calls == 0  # nothing reached the denoiser
