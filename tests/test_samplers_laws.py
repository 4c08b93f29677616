"""The samplers on toy laws whose truth is known: explicit joint laws over K^L sequences, their
NELBO-optimal ("exact") denoisers, and the exact law of each sampler as a Markov chain over the
K^L states; the toys and the statistics are ``discdiff.testing``'s (its ``toys`` module says
what "exact denoiser" means, its ``laws`` module when exact denoisers give exact samples). The
other sampler test files import their helpers (chi-square, seeds) from here.

Statistics: every draw is seeded; a law is rejected below ``P_MIN`` (chi-square); the figures
the bounds rest on are measured by ``python -m tests.test_samplers_laws``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from discdiff.distill import DCDistiller
from discdiff.samplers import (
    CappedRemask,
    RescaledRemask,
    StepRecord,
    TimeGrid,
    sample_masked,
    sample_uniform,
)
from discdiff.schedules import GammaSchedule, LogLinearSchedule, Schedule
from discdiff.testing import (
    ExactDenoiser,
    MarkovChain,
    MaskedOracle,
    UniformOracle,
    all_sequences,
    chi_square_p,
    conditional,
    frequencies,
    markov_joint,
    random_law,
    sequence_ids,
    total_variation,
    uniform_chain,
)

F64 = torch.float64
SCHEDULE = LogLinearSchedule()
P_MIN = 1e-4  # chi-square p-value below which a law is rejected (all draws are seeded)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def alpha(t: float) -> float:
    return 1.0 if t == 0 else float(SCHEDULE.alpha(torch.tensor(t, dtype=F64)))


def one_token_chain(pi: torch.Tensor, grid: TimeGrid) -> torch.Tensor:
    """The exact law of the one-token uniform sampler with x_hat = pi (its exact denoiser)."""
    return uniform_chain(UniformOracle(pi), grid)


# ---------------------------------------------------------------------------------------------
# The test oracles themselves
# ---------------------------------------------------------------------------------------------


def markov_pair() -> tuple[MarkovChain, torch.Tensor]:
    """The K = 3, L = 2 law of discdiff.testing's peaked Markov chain, and its (3, 3) joint."""
    chain = MarkovChain.peaked(3, seed=0)
    return chain, markov_joint(chain, 2)


@pytest.mark.parametrize("a_t", [0.0, 0.3, 0.9, 1.0])
def test_the_oracle_is_the_markov_chains_exact_denoiser(a_t):
    chain, joint = markov_pair()
    z = all_sequences(3, 2)
    sigma = torch.full((9,), -math.log(a_t) if a_t > 0 else math.inf)
    toy = torch.softmax(ExactDenoiser(chain)(z, sigma).to(F64), -1)
    torch.testing.assert_close(UniformOracle(joint).probs(z, a_t), toy, rtol=0, atol=1e-6)


def test_the_oracles_leave_each_position_out():
    """x_hat^l = p(x^l | z^{-l}) by brute force over the joint, for both processes."""
    law = random_law(3, 3, seed=1)
    z = torch.tensor([[0, 2, 1], [2, 2, 0]])
    a_t = 0.4
    q = lambda zm, xm: a_t * (zm == xm) + (1 - a_t) / 3
    for b in range(2):
        for pos in range(3):
            brute = torch.zeros(3, dtype=F64)
            for x in itertools.product(range(3), repeat=3):
                others = [q(int(z[b, m]), x[m]) for m in range(3) if m != pos]
                brute[x[pos]] += law[x] * math.prod(others)
            got = UniformOracle(law).probs(z[b : b + 1], a_t)[0, pos]
            torch.testing.assert_close(got, brute / brute.sum())
    masked = torch.tensor([[3, 1, 3], [0, 3, 3]])  # mask id K = 3
    x_hat = torch.softmax(MaskedOracle(law)(masked, torch.zeros(2))[..., :3], -1)
    given_x1 = law[:, 1, :].sum(-1)  # x^0 given x^1 = 1 (x^2 masked: no evidence)
    torch.testing.assert_close(x_hat[0, 0], given_x1 / given_x1.sum())
    given_x0 = law[0].sum(-1)  # x^1 given x^0 = 0
    torch.testing.assert_close(x_hat[1, 1], given_x0 / given_x0.sum())
    # the table of distinct rows is the row-by-row computation
    z = torch.randint(0, 3, (50, 3), generator=gen(5))
    clean = torch.rand(50, 3, generator=gen(6)) < 0.3
    oracle = UniformOracle(law)
    torch.testing.assert_close(oracle.table(z, torch.full((50,), 0.3, dtype=F64), clean),
                               oracle.probs(z, 0.3, clean))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Exactness without a tail
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_uniform_sampler_reproduces_a_one_token_law_at_any_step_count(steps):
    # One position: x_hat = pi is the exact denoiser and the reverse chain is exact at any N.
    pi = torch.tensor([0.6, 0.3, 0.1])
    denoiser = lambda z, sigma: pi.log().expand(*z.shape, 3)
    x = sample_uniform(
        denoiser, 6000, 1, steps, schedule=SCHEDULE, vocab_size=3, tail="none",
        generator=gen(steps),
    )  # fmt: skip
    assert chi_square_p(x, pi) > P_MIN


def test_uniform_sampler_reproduces_a_two_token_law_with_many_steps():
    _, joint = markov_pair()
    oracle = UniformOracle(joint)
    chains = {
        n: uniform_chain(oracle, TimeGrid.build(SCHEDULE, n, tail="none")) for n in (4, 16, 64)
    }
    tv = [total_variation(law, joint) for law in chains.values()]
    # O(1 / steps) factorisation error; measured 0.074, 0.018, 0.0043
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.01, tv
    x = sample_uniform(
        oracle, 6000, 2, 64, schedule=SCHEDULE, vocab_size=3, tail="none", generator=gen(15)
    )
    assert chi_square_p(sequence_ids(x, 3), chains[64]) > P_MIN  # the sampler is that chain
    assert chi_square_p(sequence_ids(x, 3), joint) > P_MIN  # and near the data


def test_masked_sampler_reproduces_a_two_token_law():
    # Unmasking both tokens in one step draws them independently: exact only when that never
    # happens, so many steps again; one token is exact at any step count.
    _, joint = markov_pair()
    x = sample_masked(
        MaskedOracle(joint), 6000, 2, 128, schedule=SCHEDULE, vocab_size=4, mask_id=3,
        tail="none", generator=gen(16),
    )  # fmt: skip
    assert bool((x != 3).all())
    assert chi_square_p(sequence_ids(x, 3), joint) > P_MIN
    pi = joint.sum(1)
    one = MaskedOracle(pi)
    for remask in (None, CappedRemask(SCHEDULE, 0.2), RescaledRemask(SCHEDULE, 0.5)):
        x = sample_masked(
            one, 6000, 1, 4, schedule=SCHEDULE, vocab_size=4, mask_id=3, remask=remask,
            tail="none", generator=gen(17),
        )  # fmt: skip
        assert chi_square_p(x, torch.cat([pi, torch.zeros(1, dtype=F64)])) > P_MIN


# ---------------------------------------------------------------------------------------------
# The Ψ step on an exact law
# ---------------------------------------------------------------------------------------------


def test_psi_re_noising_the_denoising_posterior_lands_near_the_law():
    """K = 3, L = 2 Markov law, its exact denoiser, 64 steps at kappa = 0.5, no tail.

    Exact chain laws (``python -m tests.test_samplers_laws``): TV to the data 0.0129 with the
    denoising-posterior form (forward of q0), 0.0637 with the old form (forward of x_hat),
    0.0043 for plain ancestral. The sampler's 20000 draws are that chain (chi-square), and their
    TV to the data, 0.012-0.017 over seeds 40-42 (Monte Carlo error ~0.008), stays below 0.035,
    which the old form's 0.064 could not."""
    chain, joint = markov_pair()
    grid = TimeGrid.build(SCHEDULE, 64, tail="none")
    oracle = UniformOracle(joint)
    spec = uniform_chain(oracle, grid, kappa=0.5)
    old = uniform_chain(oracle, grid, kappa=0.5, renoise="x_hat")
    tv_spec, tv_old = total_variation(spec, joint), total_variation(old, joint)
    assert tv_spec < 0.02 and tv_old > 0.05 and tv_old > 4 * tv_spec, (tv_spec, tv_old)
    x = sample_uniform(
        ExactDenoiser(chain), 20000, 2, 64, schedule=SCHEDULE, vocab_size=3, tail="none",
        kappa=0.5, generator=gen(40),
    )  # fmt: skip
    ids = sequence_ids(x, 3)
    assert chi_square_p(ids, spec) > P_MIN
    assert total_variation(frequencies(ids, 9), joint) < 0.035


# ---------------------------------------------------------------------------------------------
# Tails on an exact one-token law
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_greedy_tail_returns_the_mode_and_map_tail_the_law(steps):
    """L = 1, x_hat = pi exact. argmax x_hat ignores the token's own evidence: the mode for every
    sample (entropy 0). The MAP tail is the mode of q(z_0 | z_{t_min}, x_hat), which keeps
    z_{t_min} unless x_hat makes it 1 / (1 + K alpha / (1 - alpha)) ~ 3e-6 times less likely
    than the best class: z_{t_min} has the law alpha(t_min) pi + (1 - alpha(t_min)) / K
    (TV 1e-5 from pi), so the output is within Monte Carlo error of pi (0.004 at n = 20000)."""
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    denoiser = lambda z, sigma: pi.log().expand(*z.shape, 4)
    common = dict(schedule=SCHEDULE, vocab_size=4)
    greedy = sample_uniform(denoiser, 20000, 1, steps, tail="greedy", generator=gen(50), **common)
    assert bool((greedy == 0).all())  # entropy 0
    x = sample_uniform(denoiser, 20000, 1, steps, tail="map", generator=gen(51), **common)
    assert chi_square_p(x, pi) > P_MIN
    assert total_variation(frequencies(x, 4), pi) < 0.02


# ---------------------------------------------------------------------------------------------
# Prompts and infilling: the free positions follow the conditional law
# ---------------------------------------------------------------------------------------------


def prompt_rows(values: list[list[int]], mask: list[bool], n: int) -> tuple[torch.Tensor, ...]:
    """n rows of each prompt in ``values`` (positions outside ``mask`` hold junk), the mask."""
    prompt = torch.tensor(values).repeat_interleave(n, 0)
    return prompt, torch.tensor(mask).expand_as(prompt).clone()


class PromptWatcher:
    """A callback that checks the prompt's positions in every ``StepRecord.z_s``."""

    def __init__(self, prompt: torch.Tensor, mask: torch.Tensor):
        self.prompt, self.mask, self.records = prompt, mask, 0

    def __call__(self, record: StepRecord) -> None:
        self.records += 1
        assert torch.equal(record.z_s[self.mask], self.prompt[self.mask])


def test_uniform_prompt_conditionals_with_two_free_positions():
    """L = 3, K = 3, prompt at position 0 (two values, one per half of the batch); the oracle
    sees the prompt as clean context through per-token levels (sigma = 0 there). Two free
    positions: exact only with many steps, so the samples are compared with the sampler's
    exact chain (chi-square p-values 0.011 and 0.33) and the chain with the conditional law
    (exact TV 0.0091 and 0.0069 at 64 steps, which 6000 draws resolve: against the conditional
    law itself the p-values are 0.0085 and 0.0005)."""
    law = random_law(3, 3, seed=2)
    oracle = UniformOracle(law)
    n, steps = 6000, 64
    prompt, mask = prompt_rows([[0, 0, 0], [2, 1, 1]], [True, False, False], n)
    watcher = PromptWatcher(prompt, mask)
    x = sample_uniform(
        oracle, 2 * n, 3, steps, schedule=SCHEDULE, vocab_size=3, tail="none", prompt=prompt,
        prompt_mask=mask, callback=watcher, generator=gen(60),
    )  # fmt: skip
    assert torch.equal(x[:, 0], prompt[:, 0]) and watcher.records == steps
    grid = TimeGrid.build(SCHEDULE, steps, tail="none")
    for half in range(2):
        rows = slice(half * n, (half + 1) * n)
        target = conditional(law, prompt[rows][0], mask[0])
        chain = uniform_chain(oracle, grid, prompt=prompt[rows][0], mask=mask[0])
        assert total_variation(chain, target) < 0.015
        assert chi_square_p(sequence_ids(x[rows, 1:], 3), chain) > P_MIN


@pytest.mark.parametrize("process", ["uniform", "masked"])
def test_infilling_is_exact_at_any_step_count(process):
    """Prompt at both ends of L = 3: one free position, so 4 steps are exact (module docstring)."""
    law = random_law(3, 3, seed=3)
    n = 6000
    prompt, mask = prompt_rows([[0, 0, 2], [1, 0, 1]], [True, False, True], n)
    watcher = PromptWatcher(prompt, mask)
    common = dict(prompt=prompt, prompt_mask=mask, callback=watcher, tail="none",
                  schedule=SCHEDULE, generator=gen(61))  # fmt: skip
    if process == "uniform":
        x = sample_uniform(UniformOracle(law), 2 * n, 3, 4, vocab_size=3, **common)
    else:
        x = sample_masked(MaskedOracle(law), 2 * n, 3, 4, vocab_size=4, mask_id=3, **common)
    assert torch.equal(x[mask], prompt[mask]) and watcher.records == 4
    for half in range(2):
        rows = slice(half * n, (half + 1) * n)
        assert chi_square_p(x[rows, 1], conditional(law, prompt[rows][0], mask[0])) > P_MIN


def test_masked_prompt_conditionals_with_two_free_positions():
    law = random_law(3, 3, seed=4)
    n = 6000
    prompt, mask = prompt_rows([[1, 0, 0], [2, 0, 0]], [True, False, False], n)
    watcher = PromptWatcher(prompt, mask)
    x = sample_masked(
        MaskedOracle(law), 2 * n, 3, 128, schedule=SCHEDULE, vocab_size=4, mask_id=3,
        tail="none", prompt=prompt, prompt_mask=mask, callback=watcher, generator=gen(62),
    )  # fmt: skip
    assert torch.equal(x[:, 0], prompt[:, 0]) and bool((x != 3).all())
    assert watcher.records == 128
    for half in range(2):
        rows = slice(half * n, (half + 1) * n)
        target = conditional(law, prompt[rows][0], mask[0])
        assert chi_square_p(sequence_ids(x[rows, 1:], 3), target) > P_MIN


PROMPTS = {  # the prompt kinds of L = 3: which positions are given
    "prefix": torch.tensor([True, False, False]),
    "middle": torch.tensor([False, True, False]),
    "infill": torch.tensor([True, False, True]),
}


def markov_law3() -> torch.Tensor:
    """The K = 3, L = 3 joint of discdiff.testing's peaked Markov chain (seed 0)."""
    return markov_joint(MarkovChain.peaked(3, seed=0), 3)


def prompt_tv(law: torch.Tensor, kind: str, steps: int, told: bool) -> tuple[float, float]:
    """The exact TV between the uniform sampler's law of the free positions (tail "none") and
    p(x_free | x_prompt): its mean over the prompt's values under the data law, and its worst."""
    mask = PROMPTS[kind]
    oracle, grid = UniformOracle(law), TimeGrid.build(SCHEDULE, steps, tail="none")
    given = law.sum(tuple(m for m in range(3) if not mask[m]))  # p(x_prompt)
    mean, worst = 0.0, 0.0
    for values in all_sequences(3, int(mask.sum())):
        prompt = torch.zeros(3, dtype=torch.long)
        prompt[mask] = values
        chain = uniform_chain(oracle, grid, prompt=prompt, mask=mask, told=told)
        tv = total_variation(chain, conditional(law, prompt, mask))
        mean, worst = mean + float(given[tuple(values.tolist())]) * tv, max(worst, tv)
    return mean, worst


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_uniform_prompts_are_exact_only_when_the_denoiser_is_told(kind):
    """Markov K = 3, L = 3, 64 steps, tail "none": the sampler's exact law of the free
    positions against p(x_free | x_prompt). Clamping a prompt that the denoiser reads as noised
    leaves a worst TV of 0.089 (prefix), 0.254 (middle), 0.250 (infill) (an approximation,
    opt-in only); per-token levels make it exact to the few-step error (worst 0.005)."""
    law = markov_law3()
    assert prompt_tv(law, kind, 64, told=True)[1] <= 0.01
    assert prompt_tv(law, kind, 64, told=False)[1] >= 0.08


def test_uniform_prompt_samples_follow_the_told_chain():
    """The sampler itself, with per-token levels, draws the exact chain (middle prompt)."""
    law, mask = markov_law3(), PROMPTS["middle"]
    n, steps = 6000, 16
    prompt, masks = prompt_rows([[0, 1, 0]], mask.tolist(), n)
    x = sample_uniform(UniformOracle(law), n, 3, steps, schedule=SCHEDULE, vocab_size=3,
                       tail="none", prompt=prompt, prompt_mask=masks,
                       generator=gen(63))  # fmt: skip
    chain = uniform_chain(UniformOracle(law), TimeGrid.build(SCHEDULE, steps, tail="none"),
                          prompt=prompt[0], mask=mask)  # fmt: skip
    assert chi_square_p(sequence_ids(x[:, ~mask], 3), chain) > P_MIN


def test_a_prompt_for_a_denoiser_without_token_levels_is_refused_or_clamped_on_request():
    law, mask = markov_law3(), PROMPTS["prefix"]
    prompt, masks = prompt_rows([[1, 0, 0]], mask.tolist(), 8)
    blind = lambda z, sigma: UniformOracle(law)(z, sigma)  # reads one level per sequence
    with pytest.raises(ValueError, match="prompt.*per-token noise levels.*clamp_prompt=True"):
        sample_uniform(blind, 8, 3, 4, schedule=SCHEDULE, vocab_size=3, prompt=prompt,
                       prompt_mask=masks)  # fmt: skip
    x = sample_uniform(blind, 8, 3, 4, schedule=SCHEDULE, vocab_size=3, prompt=prompt,
                       prompt_mask=masks, clamp_prompt=True, generator=gen(64))  # fmt: skip
    assert torch.equal(x[:, 0], prompt[:, 0])


# ---------------------------------------------------------------------------------------------
# A distilled student samples on the log-linear schedule
# ---------------------------------------------------------------------------------------------


def sampler_law(schedule: Schedule, pi: torch.Tensor, steps: int) -> torch.Tensor:
    return one_token_chain(pi, TimeGrid.build(schedule, steps, tail="none"))


@pytest.mark.parametrize("k", [4, 8])
def test_distilled_student_reproduces_the_law_on_the_log_linear_schedule(k):
    """An exact student of a one-token law (x_hat = pi: the optimal denoiser on any schedule).
    ``DCDistiller.sample`` (log-linear, alpha_1 = 1e-3, z_1 uniform) reproduces pi; sampling on
    the distiller's training axis, the paper's gamma-window [-4, -1] (alpha_1 = 0.66 at K = 4,
    0.55 at K = 8), starts from the wrong prior: its exact law is TV 0.125 (K = 4), 0.083
    (K = 8) from pi, at any step count, against 0.00000 on the log-linear schedule."""
    pi = torch.softmax(torch.linspace(2, -1, k, dtype=F64), 0)
    student = lambda z, sigma: pi.log().expand(*z.shape, k)
    distiller = DCDistiller(student, k, window=GammaSchedule(-4.0, -1.0))
    assert float(distiller.schedule.alpha(torch.ones((), dtype=F64))) > 0.5
    n, steps = 20000, 8
    x = distiller.sample(student, n, 1, steps, tail="none", generator=gen(70))
    assert total_variation(sampler_law(LogLinearSchedule(), pi, steps), pi) < 1e-4
    assert chi_square_p(x, pi) > P_MIN
    window = sampler_law(distiller.schedule, pi, steps)
    assert total_variation(window, pi) > 0.05
    y = distiller.sample(
        student, n, 1, steps, schedule=distiller.schedule, tail="none", generator=gen(71)
    )
    assert chi_square_p(y, window) > P_MIN  # the sampler is that chain
    assert chi_square_p(y, pi) < 1e-6  # and measurably off the law


# ---------------------------------------------------------------------------------------------
# The figures behind the bounds
# ---------------------------------------------------------------------------------------------


def _report() -> None:  # pragma: no cover - a measurement, run by hand
    """Print the exact-chain TVs and the seeded tests' statistics the bounds above rest on."""
    chain, joint = markov_pair()
    oracle = UniformOracle(joint)
    for n in (4, 16, 64):
        grid = TimeGrid.build(SCHEDULE, n, tail="none")
        tv = [
            total_variation(uniform_chain(oracle, grid, kappa=kappa, renoise=form), joint)
            for kappa, form in ((None, "posterior"), (0.5, "posterior"), (0.5, "x_hat"))
        ]
        print(f"Markov K=3 L=2, {n} steps, exact TV: ancestral {tv[0]:.4f}, "
              f"Psi(0.5) q0 {tv[1]:.4f}, Psi(0.5) old {tv[2]:.4f}")  # fmt: skip
    grid = TimeGrid.build(SCHEDULE, 64, tail="none")
    spec = uniform_chain(oracle, grid, kappa=0.5)
    for seed in (40, 41, 42):
        x = sample_uniform(ExactDenoiser(chain), 20000, 2, 64, schedule=SCHEDULE, vocab_size=3,
                           tail="none", kappa=0.5, generator=gen(seed))  # fmt: skip
        ids = sequence_ids(x, 3)
        print(f"Psi(0.5) sampler, seed {seed}: TV to data "
              f"{total_variation(frequencies(ids, 9), joint):.4f}, chi-square p vs its chain "
              f"{chi_square_p(ids, spec):.3f}")  # fmt: skip
    for kind in PROMPTS:
        (b_mean, b_worst), (a_mean, a_worst) = (
            prompt_tv(markov_law3(), kind, 64, told) for told in (False, True)
        )
        print(f"uniform {kind} prompt, Markov K=3 L=3, 64 steps, exact TV to p(x_free | prompt) "
              f"(mean over prompts / worst): clamped {b_mean:.4f} / {b_worst:.4f}, per-token "
              f"levels {a_mean:.4f} / {a_worst:.4f}")  # fmt: skip
    law = random_law(3, 3, seed=2)
    mask = torch.tensor([True, False, False])
    for first in (0, 2):
        prompt = torch.tensor([first, 0, 0])
        c = uniform_chain(UniformOracle(law), grid, prompt=prompt, mask=mask)
        print(f"uniform prompt x0={first}, 64 steps: exact TV(chain, conditional) "
              f"{total_variation(c, conditional(law, prompt, mask)):.4f}")  # fmt: skip
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    for steps in (1, 4, 16):
        denoiser = lambda z, sigma: pi.log().expand(*z.shape, 4)
        x = sample_uniform(denoiser, 20000, 1, steps, schedule=SCHEDULE, vocab_size=4,
                           tail="map", generator=gen(51))  # fmt: skip
        print(f"MAP tail, {steps} steps: TV to pi {total_variation(frequencies(x, 4), pi):.4f}, "
              f"chi-square p {chi_square_p(x, pi):.3f}")  # fmt: skip
    for k in (4, 8):
        pi = torch.softmax(torch.linspace(2, -1, k, dtype=F64), 0)
        d = DCDistiller(lambda z, s: None, k, window=GammaSchedule(-4.0, -1.0))
        a_1 = float(d.schedule.alpha(torch.ones((), dtype=F64)))
        tv_window = total_variation(sampler_law(d.schedule, pi, 8), pi)
        tv_log_linear = total_variation(sampler_law(LogLinearSchedule(), pi, 8), pi)
        print(f"student K={k}: window alpha_1 {a_1:.3f}, exact TV on the window "
              f"{tv_window:.4f}, on log-linear {tv_log_linear:.2e}")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    _report()
