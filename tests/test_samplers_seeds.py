"""discdiff.samplers.streams: row-wise randomness (``seed=``). Row i of a sample is the same
whatever the batch size and whatever rows sit beside it, for every sampler, tail and filter; the
law is unchanged (chi-square against explicit probabilities); the stream's numbers are
SplitMix64 to the bit, uniform (KS) and distinct across (seed, row, call, position)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from scipy import stats

from discdiff.diffusion import MaskedDiffusion, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.samplers import (
    CappedRemask,
    RowStream,
    masked_ancestral_step,
    sample_categorical,
    sample_categorical_logits,
    sample_masked,
    sample_uniform,
    uniform_ancestral_step,
    uniform_posterior,
)
from discdiff.samplers.categorical import randint, uniforms
from discdiff.samplers.streams import mix64
from discdiff.schedules import LogLinearSchedule
from discdiff.sdtt import SDTTDistiller
from discdiff.testing import chi_square_p

K, L, STEPS, SEED = 6, 5, 4, 1234
MASK = K - 1  # the masked samplers' mask id: their denoiser returns K logits, the last the mask
NULL = 3  # the guided samplers' null label
P_MIN = 1e-4  # chi-square / KS threshold: a correct sampler fails it 1 time in 10^4


class RowDenoiser:
    """Logits for row b that depend on row b alone (its tokens, its sigma, its label), built
    from table lookups and elementwise sums, so that they are bit-identical in any batch."""

    def __init__(self, vocab_size: int = K, use_sigma: bool = True):
        g = torch.Generator().manual_seed(7)
        self.table = torch.randn(vocab_size, vocab_size, generator=g) * 1.5
        self.labels = torch.randn(NULL + 1, vocab_size, generator=g)
        self.use_sigma = use_sigma

    reads_token_levels = True  # sigma (B,) or (B, L): prompts are clean context

    def __call__(self, z_t, sigma, label=None):
        out = self.table[z_t] + 0.5 * self.table[z_t.roll(1, -1)]
        if self.use_sigma:
            level = sigma.unsqueeze(-1) if sigma.ndim == 2 else sigma.reshape(-1, 1, 1)
            out = out + level * self.table[0]
        if label is not None:
            out = out + self.labels[label].unsqueeze(1)
        return out


def _labels(b: int) -> dict:
    return {"label": torch.arange(b) % 3}


def _null(b: int) -> dict:
    return {"label": torch.full((b,), NULL)}


def _uniform(**kw) -> Callable[[int, dict], torch.Tensor]:
    def draw(b, extra):
        return sample_uniform(RowDenoiser(), b, L, STEPS, schedule=LogLinearSchedule(),
                              vocab_size=K, seed=SEED, **kw, **extra)  # fmt: skip

    return draw


def _masked(**kw) -> Callable[[int, dict], torch.Tensor]:
    def draw(b, extra):
        return sample_masked(RowDenoiser(use_sigma=False), b, L, STEPS,
                             schedule=LogLinearSchedule(), vocab_size=K, mask_id=MASK, seed=SEED,
                             **kw, **extra)  # fmt: skip

    return draw


def _guided(sampler, **kw):
    def draw(b, extra):
        return sampler(guidance_scale=1.5, **kw)(b, {"cond": _labels(b), "uncond": _null(b),
                                                     **extra})  # fmt: skip

    return draw


def _diffusion(masked: bool):
    def draw(b, extra):
        if masked:
            return MaskedDiffusion(K - 1).sample(RowDenoiser(use_sigma=False), b, L, STEPS,
                                                 seed=SEED, **extra)  # fmt: skip
        return UniformDiffusion(K).sample(RowDenoiser(), b, L, STEPS, seed=SEED, **extra)

    return draw


def _dcd(b, extra):
    d = DCDistiller(RowDenoiser(), K, initial_steps=32, n_rounds=2)
    return d.sample(RowDenoiser(), b, L, STEPS, seed=SEED, **extra)


def _sdtt(b, extra):
    d = SDTTDistiller(RowDenoiser(use_sigma=False), K - 1, initial_steps=16, n_rounds=2)
    return d.sample(RowDenoiser(use_sigma=False), b, L, STEPS, seed=SEED, **extra)


SAMPLERS = {
    "uniform greedy": _uniform(tail="greedy"),
    "uniform map": _uniform(tail="map"),
    "uniform none": _uniform(tail="none"),
    "psi kappa=0.5": _uniform(kappa=0.5, tail="none"),
    "uniform top_k=3": _uniform(top_k=3),
    "uniform top_p=0.8": _uniform(top_p=0.8, tail="none"),
    "uniform guided": _guided(_uniform, tail="none"),
    "masked cache greedy": _masked(cache=True),
    "masked cache none": _masked(cache=True, tail="none"),
    "masked no cache": _masked(cache=False, tail="none"),
    "masked map": _masked(cache=False, tail="map"),
    "masked remask": _masked(remask=CappedRemask(LogLinearSchedule(), 0.3), tail="none"),
    "masked top_k=2": _masked(top_k=2, tail="none"),
    "masked top_p=0.7": _masked(top_p=0.7),
    "masked guided": _guided(_masked, tail="none"),
    "UniformDiffusion.sample": _diffusion(masked=False),
    "MaskedDiffusion.sample": _diffusion(masked=True),
    "DCDistiller.sample": _dcd,
    "SDTTDistiller.sample": _sdtt,
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_row_zero_is_the_same_in_a_batch_of_1_4_and_32(name):
    draw = SAMPLERS[name]
    alone = draw(1, {})
    assert alone.shape == (1, L)
    four = draw(4, {})
    batch = draw(32, {})
    assert torch.equal(four[0], alone[0]), f"{name}: row 0 of a batch of 4 differs"
    assert torch.equal(batch[0], alone[0]), f"{name}: row 0 of a batch of 32 differs"
    assert torch.equal(batch[:4], four), f"{name}: rows 1-3 differ between batches of 4 and 32"
    # Not a constant: other rows (other keys) draw other tokens.
    assert not all(torch.equal(batch[i], batch[0]) for i in range(1, 32)), name


def _prompts(b: int, order: torch.Tensor) -> dict:
    """Prompts that make the rows differ: row r holds prompt order[r] at positions 0 and 3."""
    ids = torch.randint(0, K - 1, (b, L), generator=torch.Generator().manual_seed(5))  # no mask
    prompt = ids[order]
    mask = torch.zeros(b, L, dtype=torch.bool)
    mask[:, [0, 3]] = True
    return {"prompt": prompt, "prompt_mask": mask}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_row_does_not_depend_on_its_neighbours(name):
    """Same index i, same seed, different rows around it: row i is unchanged."""
    b, i = 6, 2
    first = torch.arange(b)
    other = torch.tensor([5, 3, 2, 0, 1, 4])  # row i keeps its prompt, the others move
    assert int(first[i]) == int(other[i]) and not torch.equal(first, other)
    x = SAMPLERS[name](b, _prompts(b, first))
    y = SAMPLERS[name](b, _prompts(b, other))
    assert torch.equal(x[i], y[i]), name
    assert not torch.equal(x, y)  # the neighbours did change


def test_the_masked_cache_changes_the_calls_never_the_tokens():
    """The cache decides from the whole batch (reuse x_hat while no token of any row changed);
    a row's draws are made up front, and a recomputed x_hat equals the cached one, so caching
    can only change the NFE: cache on and off give the same tokens, row by row, in any batch."""
    calls = {}

    def run(b, cache):
        model = RowDenoiser(use_sigma=False)
        n = [0]

        def counted(z, sigma, **cond):
            n[0] += 1
            return model(z, sigma, **cond)

        out = sample_masked(counted, b, L, 16, schedule=LogLinearSchedule(), vocab_size=K,
                            mask_id=MASK, seed=SEED, cache=cache)  # fmt: skip
        calls[(b, cache)] = n[0]
        return out

    for b in (1, 8):
        assert torch.equal(run(b, True), run(b, False))
    assert torch.equal(run(1, True)[0], run(8, True)[0])
    assert calls[(1, True)] < calls[(1, False)]  # the cache did skip calls alone
    assert calls[(1, True)] <= calls[(8, True)]  # and skips fewer when more rows can change


def test_the_step_functions_take_a_row_stream():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, L, K, generator=g)
    z = torch.randint(0, K - 1, (4, L), generator=g)
    z[:, ::2] = MASK
    one = uniform_ancestral_step(logits[:1], z[:1], 0.6, 0.2, generator=RowStream(9, L))
    four = uniform_ancestral_step(logits, z, 0.6, 0.2, generator=RowStream(9, L))
    assert torch.equal(one[0], four[0])
    one = masked_ancestral_step(logits[:1], z[:1], 0.6, 0.2, mask_id=MASK,
                                generator=RowStream(9, L))  # fmt: skip
    four = masked_ancestral_step(logits, z, 0.6, 0.2, mask_id=MASK, generator=RowStream(9, L))
    assert torch.equal(one[0], four[0])


@pytest.mark.parametrize("which", ["probs", "logits"])
def test_categorical_rows_do_not_depend_on_the_batch(which):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 3, 50, generator=g)
    if which == "probs":
        draw = lambda x: sample_categorical(torch.softmax(x, -1), seed=SEED)  # noqa: E731
    else:
        draw = lambda x: sample_categorical_logits(x, top_p=0.9, seed=SEED)  # noqa: E731
    full = draw(logits)
    assert torch.equal(draw(logits[:1])[0], full[0])
    assert torch.equal(draw(logits[:4])[0], full[0])
    changed = logits.clone()
    changed[3:] = torch.randn(29, 3, 50, generator=g)
    assert torch.equal(draw(changed)[:3], full[:3])
    # A single row (K,) is row 0 with one number per row.
    assert draw(logits[0, 0]).shape == ()


# ---- the law is unchanged


def test_sample_categorical_with_a_seed_has_the_exact_law():
    """4000 rows of one law (K = 7, classes down to 1 %) drawn with seed=: chi-square, and the
    same with rows of (N, 2) (two draws per row key)."""
    probs = torch.tensor([0.30, 0.25, 0.2, 0.12, 0.08, 0.04, 0.01], dtype=torch.float64)
    for shape in ((4000,), (2000, 2)):
        x = sample_categorical(probs.expand(*shape, 7), seed=SEED)
        p = chi_square_p(x, probs)
        assert p > P_MIN, (shape, p)


def test_one_uniform_step_with_a_seed_has_the_exact_law():
    """One ancestral step from z_1 ~ Uniform to t = 0 with a denoiser that reads z_1 (L = 1):
    the law of z_0 is (1/K) sum_i q(z_0 | z_1 = i, x_hat(i)), from the explicit posterior
    (``uniform_posterior``, float64). 6000 draws, chi-square."""
    model = RowDenoiser(use_sigma=False)
    schedule = LogLinearSchedule()
    n = 6000
    x = sample_uniform(model, n, 1, 1, schedule=schedule, vocab_size=K, tail="none", seed=SEED)
    z1 = torch.arange(K).reshape(K, 1)
    x_hat = torch.softmax(model(z1, torch.zeros(K)).double(), -1)
    a_t = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    law = uniform_posterior(x_hat, z1, 1.0, a_t).reshape(K, K).mean(0)
    assert math.isclose(float(law.sum()), 1.0, rel_tol=1e-12)
    p = chi_square_p(x, law)
    assert p > P_MIN, p


# ---- the stream itself


def _reference(seed: int, row: int, call: int, pos: int) -> int:
    """SplitMix64 in Python ints, as the module docstring writes it."""
    gamma, delta = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03
    key = mix64(mix64(mix64(seed) + (row + 1) * gamma) ^ mix64((call + 1) * delta))
    return mix64(key + (pos + 1) * gamma)


def test_mix64_is_splitmix64():
    """Known outputs of SplitMix64 seeded with 0 (the xoshiro authors' reference C code):
    state += 0x9E3779B97F4A7C15, output = mix(state)."""
    gamma = 0x9E3779B97F4A7C15
    first = [mix64(i * gamma) for i in (1, 2, 3)]
    assert first == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5, 2**64 - 1])
def test_the_stream_is_splitmix64_to_the_bit(seed):
    s = RowStream(seed, 3)
    for call in range(3):
        u = s.uniforms(2 * 3)
        want = [(_reference(seed, r, call, p) >> 11) * 2.0**-53 for r in range(2) for p in range(3)]
        assert u.tolist() == want
    ints = s.randint(50257, 6)
    want = [(_reference(seed, r, 3, p) & (2**63 - 1)) % 50257 for r in range(2) for p in range(3)]
    assert ints.tolist() == want
    assert s.calls == 4


def test_stream_uniforms_are_uniform_and_distinct():
    s = RowStream(SEED, 1000)
    u = torch.cat([s.uniforms(20 * 1000) for _ in range(3)])  # 3 calls, 20 rows, 1000 positions
    n = u.numel()
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert stats.kstest(u.numpy(), "uniform").pvalue > P_MIN
    # distinct (seed, row, call, position) give distinct numbers: seeds 0..3 beside SEED too
    others = [RowStream(seed, 1000).uniforms(20 * 1000) for seed in range(4)]
    everything = torch.cat([u, *others])
    assert torch.unique(everything).numel() == everything.numel()
    ints = RowStream(SEED, 1000).randint(7, 70_000)
    assert chi_square_p(ints, torch.full((7,), 1 / 7, dtype=torch.float64)) > P_MIN


def test_a_generator_still_draws_what_it_drew():
    """The generator path is unchanged: the helpers are torch.rand / torch.randint."""
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(randint(50, 24, a, torch.device("cpu")).view(4, 6),
                       torch.randint(0, 50, (4, 6), generator=b))  # fmt: skip
    assert torch.equal(uniforms(5, a, torch.device("cpu")),
                       torch.rand(5, dtype=torch.float64, generator=b))  # fmt: skip


# ---- errors


def test_seed_and_generator_together_is_an_error():
    g = torch.Generator()
    with pytest.raises(ValueError, match="generator= .* or seed="):
        sample_uniform(RowDenoiser(), 1, L, 2, schedule=LogLinearSchedule(), vocab_size=K,
                       generator=g, seed=1)  # fmt: skip
    with pytest.raises(ValueError, match="not both"):
        sample_categorical_logits(torch.zeros(2, K), generator=g, seed=1)


def test_a_numpy_integer_is_a_seed():
    np = pytest.importorskip("numpy")
    numpy_ints = RowStream(np.int64(5), np.int32(3))
    assert numpy_ints.seed == 5 and type(numpy_ints.seed) is int
    assert torch.equal(numpy_ints.uniforms(3), RowStream(5, 3).uniforms(3))


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "1", torch.tensor(1.0)])
def test_a_bad_seed_is_named(seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        sample_masked(RowDenoiser(use_sigma=False), 1, L, 2, schedule=LogLinearSchedule(),
                      vocab_size=K, mask_id=MASK, seed=seed)  # fmt: skip


def test_a_draw_of_partial_rows_is_an_error():
    with pytest.raises(ValueError, match="length=L"):
        RowStream(0, 4).uniforms(6)
    with pytest.raises(ValueError, match="length"):
        RowStream(0, 0)
    with pytest.raises(ValueError, match="k must be"):
        RowStream(0, 2).randint(0, 4)


def test_a_stream_of_another_row_length_is_named():
    logits, z = torch.zeros(2, L, K), torch.zeros(2, L, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"RowStream of length {L + 1}.*RowStream\(seed, {L}\)"):
        uniform_ancestral_step(logits, z, 0.6, 0.2, generator=RowStream(0, L + 1))
    with pytest.raises(ValueError, match="RowStream of length 1"):
        masked_ancestral_step(logits, z, 0.6, 0.2, mask_id=MASK, generator=RowStream(0, 1))


def _report() -> None:  # pragma: no cover - a measurement, run by hand
    """Row 0 alone against row 0 of a batch of 4 and of 32, over 20 seeds, with ``generator=``
    and with ``seed=``: ``python -m tests.test_samplers_seeds``."""
    probs = torch.softmax(torch.randn(32, L, K, generator=torch.Generator().manual_seed(3)), -1)
    draws = {
        "sample_uniform": lambda b, r: sample_uniform(
            RowDenoiser(), b, L, STEPS, schedule=LogLinearSchedule(), vocab_size=K, **r),
        "sample_masked": lambda b, r: sample_masked(
            RowDenoiser(use_sigma=False), b, L, STEPS, schedule=LogLinearSchedule(),
            vocab_size=K, mask_id=MASK, **r),
        "sample_categorical_logits": lambda b, r: sample_categorical_logits(probs[:b].log(), **r),
    }  # fmt: skip
    for name, draw in draws.items():
        for how in ("generator", "seed"):
            same = 0
            for s in range(20):
                rows = []
                for b in (1, 4, 32):
                    rand = {"seed": s} if how == "seed" else {
                        "generator": torch.Generator().manual_seed(s)}  # fmt: skip
                    rows.append(draw(b, rand)[0])
                alone, four, many = rows
                same += bool(torch.equal(alone, four) and torch.equal(alone, many))
            print(f"{name}, {how}=: row 0 alone equals row 0 of a batch of 4 and of 32 for "
                  f"{same} of 20 seeds")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    _report()
