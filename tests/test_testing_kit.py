"""discdiff.testing as a public kit: the exact law of a run against independent computations, the
statistics' stated error rates, the contract checks catching what they promise to catch (and
passing the library's own components), the strategies, and the "Test your own component" page,
whose snippets run here."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff.models import DiT
from discdiff.samplers import MaskedStep, TimeGrid, UniformStep, sample_uniform
from discdiff.schedules import CosineSchedule, LinearSchedule, LogLinearSchedule
from discdiff.testing import (
    MarkovChain,
    Options,
    Toy,
    UniformOracle,
    assert_samples_follow,
    check_denoiser,
    check_sampler,
    check_schedule,
    chi_square_p,
    exact_law,
    exact_tv,
    markov_joint,
    posterior_denoiser,
    random_law,
    samples_needed,
    tv_bound,
    uniform_chain,
)
from discdiff.testing import strategies as kit

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64
SCHEDULE = LogLinearSchedule()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# The exact law of a run
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [None, 0.4])
@pytest.mark.parametrize("prompt", [None, (1, None, None), (None, 2, 0)])
def test_exact_law_is_the_uniform_chain(kappa, prompt):
    """Two enumerations, one from the explicit posteriors of discdiff.samplers (uniform_chain),
    one by Bayes with explicit matrices (exact_law), agree to the sigma cast (float32)."""
    law = random_law(3, 3, seed=2)
    options = Options(steps=5, kappa=kappa, prompt=prompt)
    values, mask = options.prompt_mask(3)
    chain = uniform_chain(UniformOracle(law), TimeGrid.build(SCHEDULE, 5, tail="none"),
                          kappa=kappa, prompt=values if prompt else None,
                          mask=mask if prompt else None)  # fmt: skip
    assert exact_tv(exact_law(Toy.of(law), options), chain) < 1e-7


@pytest.mark.parametrize("process", ["uniform", "masked"])
@pytest.mark.parametrize("steps", [1, 3])
def test_one_free_position_is_exact_at_any_step_count(process, steps):
    """With one free position the reverse chain is the exact one: the law given the prompt."""
    law = random_law(4, 2, seed=5)
    toy = Toy.of(law)
    got = exact_law(toy, Options(process=process, steps=steps, prompt=(3, None)))
    want = law[3] / law[3].sum()
    assert exact_tv(got, want) < 1e-6


@pytest.mark.parametrize("process", ["uniform", "masked"])
def test_guidance_scale_one_is_conditional_and_zero_unconditional(process):
    toy = Toy.random(4, 1, classes=2, seed=1)
    for gamma, want in ((1.0, toy.law(1)), (0.0, toy.law())):
        got = exact_law(toy, Options(process=process, steps=3, label=1, guidance_scale=gamma))
        assert exact_tv(got, want) < 1e-6
    sharp = exact_law(toy, Options(process=process, steps=3, label=1, guidance_scale=3.0))
    mode = int(toy.law(1).argmax())
    assert float(sharp[mode]) > float(toy.law(1)[mode]) + 0.02


def test_the_greedy_tail_law_is_a_point_mass_and_the_map_tail_is_near_the_law():
    """L = 1 with the exact denoiser (Concepts §5): argmax x_hat is the data mode whatever the
    steps; the MAP tail keeps the token's own evidence."""
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    toy = Toy.of(pi)
    greedy = exact_law(toy, Options(steps=6, tail="greedy"))
    assert float(greedy[0]) == 1.0
    assert exact_tv(exact_law(toy, Options(steps=64, tail="map")), pi) < 0.01


def test_filters_restrict_the_law_to_the_kept_classes():
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    for process in ("uniform", "masked"):
        got = exact_law(Toy.of(pi), Options(process=process, steps=1, top_k=2))
        assert exact_tv(got, torch.tensor([5 / 8, 3 / 8, 0, 0], dtype=F64)) < 1e-6


def test_options_refuse_what_does_not_combine():
    with pytest.raises(ValueError, match="kappa.*remask"):
        Options(process="masked", kappa=0.5)
    with pytest.raises(ValueError, match="guidance_scale needs label"):
        Options(guidance_scale=2.0)
    with pytest.raises(ValueError, match="block_size"):
        Options(block_size=2)
    with pytest.raises(ValueError, match="K <= 8, L <= 6"):
        Toy.of(torch.full((9,), 1 / 9, dtype=F64))
    with pytest.raises(ValueError, match="denoiser returned logits that are no law"):
        exact_law(Toy.random(3, 2), Options(), denoiser=lambda z, s: torch.full((*z.shape, 3),
                                                                               math.nan))
    with pytest.raises(ValueError, match="3 and 4 cells"):
        exact_tv(torch.ones(3) / 3, torch.ones(4) / 4)


# ---------------------------------------------------------------------------------------------
# The toys' denoisers
# ---------------------------------------------------------------------------------------------


def bayes_posterior(law: torch.Tensor, z: torch.Tensor, a: float) -> torch.Tensor:
    """p(x^l | z) (L, K) by brute force over the joint, every position observed at level a."""
    k, length = law.shape[0], law.ndim
    post = torch.zeros(length, k, dtype=F64)
    for x in itertools.product(range(k), repeat=length):
        like = math.prod(a * (int(z[m]) == x[m]) + (1 - a) / k for m in range(length))
        for pos in range(length):
            post[pos, x[pos]] += law[x] * like
    return post / post.sum(-1, keepdim=True)


def test_the_posterior_parameterization_is_bayes():
    toy = Toy.random(3, 3, seed=7)
    z = torch.tensor([[0, 2, 1], [1, 1, 0]])
    a = 0.35
    sigma = torch.full((2,), -math.log(a))
    logits = toy.denoiser("uniform", "posterior")(z, sigma)
    for b in range(2):
        torch.testing.assert_close(logits[b].exp(), bayes_posterior(toy.law(), z[b], a))
    wrapped = posterior_denoiser(toy.denoiser("uniform"), 3)
    torch.testing.assert_close(wrapped(z, sigma), logits)
    assert wrapped.reads_token_levels
    clean = wrapped(z, torch.zeros(2, 3))  # alpha = 1: the point mass at z
    torch.testing.assert_close(clean.exp(), torch.nn.functional.one_hot(z, 3).to(F64))


def test_the_class_oracle_answers_each_row_with_its_class():
    toy = Toy.random(3, 2, classes=2, seed=4)
    z = torch.tensor([[0, 1], [0, 1], [0, 1]])
    out = toy.denoiser()(z, torch.full((3,), 0.7), label=torch.tensor([0, 1, 2]))
    for row, y in enumerate([0, 1, None]):
        want = UniformOracle(toy.law(y))(z[row : row + 1], torch.full((1,), 0.7))
        torch.testing.assert_close(out[row : row + 1], want)
    torch.testing.assert_close(toy.denoiser()(z, torch.full((3,), 0.7), label=1),
                               out[1:2].expand(3, -1, -1))  # one label for every row
    with pytest.raises(ValueError, match="label must be"):
        toy.denoiser()(z, torch.ones(3), label=torch.tensor([0, 1, 3]))


# ---------------------------------------------------------------------------------------------
# The statistics
# ---------------------------------------------------------------------------------------------


def test_assert_samples_follow_accepts_exact_draws_and_rejects_a_law_at_the_stated_tv():
    law = torch.softmax(torch.linspace(1, -1, 9, dtype=F64), 0)
    n = samples_needed(law, 0.1, 1e-4, 0.99)
    found = assert_samples_follow(torch.multinomial(law, n, True, generator=gen(0)), law)
    assert found.detectable <= 0.1 + 1e-9 and found.tv <= found.tv_bound
    other = law.clone()  # TV 0.1: mass moved from the first cell to the last
    other[0] -= 0.1
    other[-1] += 0.1
    rejected = 0
    for seed in range(40):
        try:
            assert_samples_follow(torch.multinomial(other, n, True, generator=gen(seed)), law)
        except AssertionError as err:
            assert "do not follow the law" in str(err) and "worst cell" in str(err)
            rejected += 1
    assert rejected >= 36  # power 0.99 promised: 36 or more of 40 fail with prob. > 0.999


def test_the_tv_bound_holds_for_exact_draws():
    """The bound at alpha = 0.05 is exceeded far less than 5 % of the time (it is loose)."""
    law = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
    n = 200
    bound = tv_bound(law, n, 0.05)
    draws = torch.multinomial(law, 500 * n, True, generator=gen(1)).view(500, n)
    freq = torch.nn.functional.one_hot(draws, 4).to(F64).mean(1)
    tv = 0.5 * (freq - law).abs().sum(-1)
    assert float((tv > bound).to(F64).mean()) <= 0.05


def test_the_grouped_chi_square_sums_the_groups_statistics():
    """chi_square_p(groups=True) with (G, C) laws against Pearson's statistic and degrees of
    freedom summed by hand (no pooling: every cell expects 5 draws or more)."""
    from scipy import stats

    laws = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=F64)
    draws = torch.stack([torch.multinomial(p, 400, True, generator=gen(9)) for p in laws])
    stat = 0.0
    for x, p in zip(draws, laws, strict=True):
        counts = torch.bincount(x, minlength=3).to(F64)
        stat += float(((counts - 400 * p) ** 2 / (400 * p)).sum())
    grouped = chi_square_p(draws, laws, groups=True)
    assert grouped == pytest.approx(float(stats.chi2.sf(stat, 4)), rel=1e-12)
    with pytest.raises(ValueError, match="groups=True needs"):
        chi_square_p(draws.flatten(), laws, groups=True)


def test_assert_samples_follow_refuses_impossible_draws():
    law = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    with pytest.raises(AssertionError, match="mass 0"):
        assert_samples_follow(torch.tensor([0, 1, 2, 0]), law)
    with pytest.raises(AssertionError, match="outside the law's 3 cells"):
        assert_samples_follow(torch.tensor([0, 5]), law)


# ---------------------------------------------------------------------------------------------
# check_schedule
# ---------------------------------------------------------------------------------------------


class Scaled(LogLinearSchedule):
    """alpha' scaled by ``factor``: 1.01 is the 1 % error check_schedule must catch."""

    factor: float = 1.01

    def dalpha_dt(self, t):
        return self.factor * super().dalpha_dt(t)


class Rising:
    """alpha = (1 - t)(1 - sin^2(3 pi t) / 2): in [0, 1], from 1, rising on (1/6, 1/3)."""

    def alpha(self, t):
        return (1 - t) * (1 - 0.5 * torch.sin(3 * math.pi * t) ** 2)

    def dalpha_dt(self, t):
        wave = 1 - 0.5 * torch.sin(3 * math.pi * t) ** 2
        return -wave - (1 - t) * 1.5 * math.pi * torch.sin(6 * math.pi * t)


class NotFromOne(LogLinearSchedule):
    def alpha(self, t):
        return 0.99 * super().alpha(t)

    def dalpha_dt(self, t):
        return 0.99 * super().dalpha_dt(t)

    def inverse(self, alpha):
        return super().inverse(alpha / 0.99)


class BadInverse(CosineSchedule):
    def inverse(self, alpha):
        return 1 - alpha


@pytest.mark.parametrize(
    "schedule",
    [LogLinearSchedule(), CosineSchedule(), LinearSchedule(sigma_min=0.0), kit.PowerSchedule(3.0)],
)
def test_the_librarys_schedules_pass_check_schedule(schedule):
    check_schedule(schedule)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (Scaled(), r"finite difference.*off by 1\.0"),
        (Rising(), "non-increasing"),
        (NotFromOne(), r"alpha\(0\) = 0\.99"),
        (BadInverse(), "inverse"),
    ],
)
def test_check_schedule_names_what_is_wrong(schedule, match):
    with pytest.raises(AssertionError, match=match):
        check_schedule(schedule)


@settings(max_examples=15)
@given(schedule=kit.schedules())
def test_every_drawn_schedule_passes(schedule):
    check_schedule(schedule)


# ---------------------------------------------------------------------------------------------
# check_denoiser
# ---------------------------------------------------------------------------------------------


def tiny_dit(k: int = 12) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset("tiny", vocab_size=k, hidden_size=32, n_blocks=1, n_heads=2,
                            cond_dim=16, dropout=0.1)  # fmt: skip
    with torch.no_grad():  # random weights everywhere: adaLN-zero would hide the attention
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


class DropsPadding(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z_t, sigma, padding_mask=None):
        return self.inner(z_t, sigma)


class Noisy(torch.nn.Module):
    def forward(self, z_t, sigma):
        return torch.randn(*z_t.shape[:2], 5)


class MixesRows(torch.nn.Module):
    def forward(self, z_t, sigma):
        return torch.nn.functional.one_hot(z_t, 5).float() + z_t.float().mean()


def test_the_librarys_denoisers_pass_check_denoiser():
    model = tiny_dit()
    model.train()
    check_denoiser(model, 12)  # eval mode for the check (dropout 0.1), then back
    assert model.training
    toy = Toy.random(3, 3, classes=2, seed=0)
    check_denoiser(toy.denoiser(), 3, length=3, cond={"label": torch.tensor([0, 1, 2])})
    check_denoiser(toy.denoiser("masked"), 4, length=3, mask_id=3)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (DropsPadding(tiny_dit()), "padded tokens change"),
        (Noisy(), "not deterministic"),
        (MixesRows(), "rows interact"),
        (lambda z, s: torch.zeros(*z.shape, 4), r"shape \(3, 8, 4\).*\(3, 8, 5\)"),
        (lambda z, s: torch.full((*z.shape, 5), math.nan), "non-finite"),
        (lambda z, s: z, "shape"),
    ],
)
def test_check_denoiser_names_what_is_wrong(model, match):
    with pytest.raises(AssertionError, match=match):
        check_denoiser(model, 5 if not isinstance(model, DropsPadding) else 12)


def block_dit(k: int = 12, block_size: int = 2) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset("tiny", vocab_size=k, hidden_size=32, n_blocks=1, n_heads=2,
                            cond_dim=16, block_size=block_size)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


class LeakyBlocks(torch.nn.Module):
    """A block model whose training call lets each block read the whole clean copy."""

    block_size = 2
    reads_token_levels = True

    def __init__(self, inner: DiT):
        super().__init__()
        self.inner = inner

    def forward(self, z_t, sigma, x_0=None, kv_cache=None):
        shifted = torch.roll(x_0, shifts=-2, dims=1)  # block i sees x_0's block i + 1
        return self.inner(z_t, sigma, x_0=shifted)


def test_block_models_and_declarations_are_checked():
    check_denoiser(block_dit(), 12)  # the training call, the block mask, the cache
    with pytest.raises(AssertionError, match="block mask leaks"):
        check_denoiser(LeakyBlocks(block_dit()), 12)
    posterior = tiny_dit()
    posterior.parameterization = "posterior"
    check_denoiser(posterior, 12)
    posterior.parameterization = "probs"
    with pytest.raises(AssertionError, match="parameterization='probs'"):
        check_denoiser(posterior, 12)


# ---------------------------------------------------------------------------------------------
# check_sampler
# ---------------------------------------------------------------------------------------------


def test_the_librarys_steps_pass_check_sampler():
    toy = Toy.random(3, 2, classes=2, seed=2)
    check_sampler(UniformStep(kappa=0.3), toy,
                  [Options(steps=3, kappa=0.3, label=1, tail="map", prompt=(None, 1)),
                   Options(steps=2, kappa=0.3, label=0, guidance_scale=2.0)],
                  tv=0.08)  # fmt: skip
    check_sampler(MaskedStep(3), toy, Options(process="masked", steps=3, label=0, tail="greedy"),
                  tv=0.08)  # fmt: skip


def test_check_sampler_catches_a_sampler_with_the_wrong_tail():
    toy = Toy.of(markov_joint(MarkovChain.peaked(3, seed=1), 2))

    def greedy_instead(denoiser, batch_size, length, steps, **kw):
        return sample_uniform(denoiser, batch_size, length, steps, **{**kw, "tail": "greedy"})

    with pytest.raises(AssertionError, match="tail='map'.*do not follow the law"):
        check_sampler(greedy_instead, toy, Options(steps=4, tail="map"))


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(data=st.data())
def test_the_strategies_draw_valid_inputs(data):
    k = data.draw(kit.vocab_sizes())
    assert 2 <= k <= 8
    a_s, a_t = data.draw(kit.alpha_pairs())
    assert 0 <= a_t <= a_s <= 1
    ids = data.draw(kit.token_batches(k))
    assert ids.dtype == torch.long and ids.ndim == 2 and 0 <= int(ids.min()) <= int(ids.max()) < k
    x = data.draw(kit.logits((2, 3, k)))
    assert x.shape == (2, 3, k) and bool(torch.isfinite(x).any(-1).all())
    assert not bool(torch.isnan(x).any())
    prompt = data.draw(kit.prompts(k, 3))
    assert len(prompt) == 3 and None in prompt
    tokens, mask = data.draw(kit.prompt_batches(k))
    assert tokens.shape == mask.shape and mask.dtype == torch.bool
    assert bool((~mask).any(-1).all()) and int(tokens.max()) < k


def test_the_kit_imports_without_hypothesis_and_the_strategies_name_the_extra():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import discdiff.testing, discdiff.testing.strategies as s\n"
            "try:\n    s.vocab_sizes()\nexcept ImportError as e:\n    print(e)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    assert "pip install 'discdiff[testing]'" in out.stdout


# ---------------------------------------------------------------------------------------------
# The documentation page
# ---------------------------------------------------------------------------------------------


def snippets() -> list[str]:
    text = (ROOT / "docs" / "pages" / "testing.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_page_has_its_snippets_and_the_biased_sampler_fits_in_ten_lines():
    found = snippets()
    assert len(found) == 4
    step = re.search(r"def my_psi_step.*?\n\n", found[0], flags=re.S)
    assert step is not None
    catch = "with pytest.raises(AssertionError, match=\"do not follow the law\"):\n"
    assert catch in found[0]
    assert len(step.group(0).strip().splitlines()) + 2 <= 10


@pytest.mark.parametrize("index", range(4))
def test_the_pages_snippets_run(index):
    exec(compile(snippets()[index], f"docs/pages/testing.md snippet {index}", "exec"), {})
