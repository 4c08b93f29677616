"""discdiff.samplers parts: the one loop ``run`` around a ``Predictor``, a step object and the
``Filter`` / ``Prompt`` / ``Guidance`` / ``Finish`` parts.

- ``sample_uniform`` / ``sample_masked`` give, for the same seed or generator, the very tokens
  (and the same callback records: step, NFE, the shown logits) as the samplers before they were
  built from parts: ``FROZEN`` holds those outputs, computed with the earlier implementation of
  each case below (keywords threaded through the loops) and pasted here;
- a step object written here plugs into ``run``;
- each part's validation error names the argument.
"""

from __future__ import annotations

import pytest
import torch

from discdiff.samplers import (
    CappedRemask,
    ConstantKappa,
    Filter,
    Finish,
    Guidance,
    Interval,
    MaskedStep,
    Prediction,
    Predictor,
    Prompt,
    StepRecord,
    TimeGrid,
    UniformStep,
    run,
    sample_masked,
    sample_uniform,
)
from discdiff.schedules import LogLinearSchedule

K, B, L = 7, 3, 6
SCHEDULE = LogLinearSchedule()
TABLE = torch.randn(K + 1, K + 1, generator=torch.Generator().manual_seed(5))
PROMPT = torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(1))
PROMPT_MASK = torch.arange(L).expand(B, L) < 2
GUIDED = {"cond": {"label": torch.tensor([1, 2, 3])}, "guidance_scale": 1.5, "uncond": {}}


def masked_denoiser(z, sigma, label=None):
    """Depends on each token, its left neighbour, the label and the noise level."""
    out = TABLE[z] + 0.5 * TABLE[z.roll(1, -1)]
    if label is not None:
        out = out + 0.7 * TABLE[label].unsqueeze(1)
    return out + 0.3 * (sigma if sigma.ndim == 2 else sigma[:, None]).unsqueeze(-1)


class UniformDenoiser:
    """Reads per-token levels: a prompt is clean context for it."""

    reads_token_levels = True

    def __call__(self, z, sigma, label=None):
        return masked_denoiser(z, sigma, label)[..., :K]


def uniform(tail, seed=None, **kw):
    gen = None if seed is not None else torch.Generator().manual_seed(3)
    return lambda cb: sample_uniform(UniformDenoiser(), B, L, 4, schedule=SCHEDULE, vocab_size=K,
                                     tail=tail, callback=cb, generator=gen, seed=seed, **kw)


def masked(tail, seed=None, **kw):
    gen = None if seed is not None else torch.Generator().manual_seed(3)
    return lambda cb: sample_masked(masked_denoiser, B, L, 5, schedule=SCHEDULE, vocab_size=K + 1,
                                    mask_id=K, tail=tail, callback=cb, generator=gen, seed=seed,
                                    **kw)


CASES = {
    "uniform greedy": uniform("greedy"),
    "uniform map top_k": uniform("map", top_k=3),
    "uniform none kappa top_p": uniform("none", kappa=0.6, top_p=0.8),
    "uniform greedy kappa schedule seed": uniform("greedy", seed=4, kappa=ConstantKappa(0.3, 0.8)),
    "uniform greedy guided": uniform("greedy", **GUIDED),
    "uniform map guided kappa top_p seed": uniform("map", seed=4, kappa=0.5, top_p=0.8, **GUIDED),
    "uniform none guided top_k": uniform("none", top_k=3, **GUIDED),
    "uniform greedy prompt": uniform("greedy", prompt=PROMPT, prompt_mask=PROMPT_MASK),
    "uniform map prompt guided": uniform("map", prompt=PROMPT, prompt_mask=PROMPT_MASK, **GUIDED),
    "uniform none clamped prompt": uniform("none", prompt=PROMPT, prompt_mask=PROMPT_MASK,
                                           clamp_prompt=True),
    "uniform greedy time grid": uniform("greedy", time_grid=[1.0, 0.7, 0.4, 0.2, 0.01]),
    "masked greedy": masked("greedy"),
    "masked none": masked("none"),
    "masked greedy no cache": masked("greedy", cache=False),
    "masked none time conditioned": masked("none", time_conditioned=True),
    "masked greedy remask top_k seed": masked("greedy", seed=4, remask=CappedRemask(SCHEDULE, 0.2),
                                              top_k=3),
    "masked none guided top_p": masked("none", top_p=0.8, **GUIDED),
    "masked greedy guided remask": masked("greedy", remask=CappedRemask(SCHEDULE, 0.2), **GUIDED),
    "masked map prompt": masked("map", prompt=PROMPT, prompt_mask=PROMPT_MASK),
    "masked none prompt guided seed": masked("none", seed=4, prompt=PROMPT,
                                             prompt_mask=PROMPT_MASK, **GUIDED),
}


def observe(case):
    """The output tokens and, per callback, (step, nfe) and the sum of the shown logits."""
    records = []
    out = case(lambda r: records.append((r.step, r.nfe, round(float(r.logits.double().sum()), 4))))
    return out.tolist(), records


# fmt: off
FROZEN = {
    'uniform greedy': (
        [[4, 4, 4, 4, 4, 4], [0, 4, 4, 4, 4, 1], [4, 0, 4, 4, 4, 4]],
        [(0, 1, 285.0765), (1, 2, 77.5335), (2, 3, 41.8205), (3, 4, 39.0249), (4, 5, 28.2964)],
    ),
    'uniform map top_k': (
        [[4, 0, 1, 1, 1, 4], [0, 4, 0, 0, 0, 1], [1, 4, 4, 0, 0, 0]],
        [(0, 1, 285.0765), (1, 2, 80.4399), (2, 3, 40.424), (3, 4, 33.8302), (4, 5, 21.4005)],
    ),
    'uniform none kappa top_p': (
        [[4, 0, 4, 1, 5, 0], [0, 0, 0, 0, 4, 5], [0, 4, 4, 4, 0, 0]],
        [(0, 1, 285.0765), (1, 2, 80.4395), (2, 3, 51.4387), (3, 4, 34.4058)],
    ),
    'uniform greedy kappa schedule seed': (
        [[4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4], [4, 4, 4, 1, 0, 4]],
        [(0, 1, 308.2672), (1, 2, 77.7026), (2, 3, 53.1322), (3, 4, 32.7009), (4, 5, 19.33)],
    ),
    'uniform greedy guided': (
        [[4, 4, 4, 4, 4, 4], [0, 0, 0, 0, 0, 0], [4, 4, 1, 4, 4, 4]],
        [(0, 2, -405.7895), (1, 4, -451.4845), (2, 6, -480.5425), (3, 8, -495.0252),
         (4, 10, -505.5337)],
    ),
    'uniform map guided kappa top_p seed': (
        [[4, 4, 0, 4, 4, 4], [0, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4]],
        [(0, 2, -421.7242), (1, 4, -459.5125), (2, 6, -393.7269), (3, 8, -475.2697),
         (4, 10, -519.6501)],
    ),
    'uniform none guided top_k': (
        [[0, 4, 4, 0, 1, 0], [0, 0, 0, 0, 0, 0], [4, 4, 4, 4, 1, 4]],
        [(0, 2, -405.7895), (1, 4, -449.4899), (2, 6, -488.1492), (3, 8, -517.1553)],
    ),
    'uniform greedy prompt': (
        [[0, 3, 4, 4, 4, 4], [0, 5, 0, 4, 4, 1], [5, 5, 1, 0, 4, 4]],
        [(0, 1, 178.9382), (1, 2, 44.3141), (2, 3, 12.1225), (3, 4, 2.2454), (4, 5, -4.8626)],
    ),
    'uniform map prompt guided': (
        [[0, 3, 4, 0, 3, 4], [0, 5, 0, 0, 0, 0], [5, 5, 5, 0, 1, 4]],
        [(0, 2, -431.5056), (1, 4, -453.4905), (2, 6, -468.5705), (3, 8, -484.2157),
         (4, 10, -494.7241)],
    ),
    'uniform none clamped prompt': (
        [[0, 3, 1, 0, 4, 4], [0, 5, 0, 0, 0, 5], [5, 5, 5, 0, 0, 0]],
        [(0, 1, 265.9759), (1, 2, 61.7435), (2, 3, 20.8433), (3, 4, 5.8657)],
    ),
    'uniform greedy time grid': (
        [[4, 4, 4, 4, 4, 4], [0, 4, 4, 4, 4, 1], [4, 0, 4, 4, 4, 4]],
        [(0, 1, 285.0765), (1, 2, 75.4567), (2, 3, 39.7311), (3, 4, 31.798), (4, 5, 20.5744)],
    ),
    'masked greedy': (
        [[2, 1, 5, 6, 2, 4], [2, 4, 2, 2, 2, 2], [2, 2, 4, 2, 4, 2]],
        [(0, 1, 145.5083), (1, 2, 112.0658), (2, 3, 91.5154), (3, 4, 79.6659), (4, 5, 63.2112),
         (5, 6, 30.749)],
    ),
    'masked none': (
        [[2, 1, 5, 6, 2, 4], [2, 4, 2, 2, 2, 2], [2, 2, 4, 2, 4, 2]],
        [(0, 1, 145.5083), (1, 2, 112.0658), (2, 3, 91.5154), (3, 4, 79.6659), (4, 5, 63.2112)],
    ),
    'masked greedy no cache': (
        [[2, 1, 5, 6, 2, 4], [2, 4, 2, 2, 2, 2], [2, 2, 4, 2, 4, 2]],
        [(0, 1, 145.5083), (1, 2, 112.0658), (2, 3, 91.5154), (3, 4, 79.6659), (4, 5, 63.2112),
         (5, 6, 30.749)],
    ),
    'masked none time conditioned': (
        [[2, 1, 5, 6, 2, 4], [2, 4, 2, 2, 2, 2], [2, 2, 4, 2, 4, 2]],
        [(0, 1, 443.9234), (1, 2, 181.4211), (2, 3, 131.0344), (3, 4, 101.7048),
         (4, 5, 72.8402)],
    ),
    'masked greedy remask top_k seed': (
        [[2, 2, 6, 2, 6, 2], [6, 1, 2, 6, 2, 6], [2, 2, 2, 6, 1, 6]],
        [(0, 1, 145.5083), (1, 2, 133.6582), (2, 3, 118.2454), (3, 4, 78.091), (4, 5, 64.1331),
         (5, 6, 28.5834)],
    ),
    'masked none guided top_p': (
        [[2, 1, 4, 6, 4, 4], [6, 2, 2, 2, 1, 2], [4, 4, 4, 2, 4, 2]],
        [(0, 2, -411.4664), (1, 4, -398.3882), (2, 6, -428.7133), (3, 8, -451.1197),
         (4, 10, -547.9904)],
    ),
    'masked greedy guided remask': (
        [[4, 4, 2, 6, 2, 4], [2, 1, 1, 1, 1, 2], [4, 1, 4, 5, 4, 2]],
        [(0, 2, -411.4664), (1, 4, -418.0384), (2, 6, -428.5147), (3, 8, -419.275),
         (4, 10, -498.0934), (5, 12, -543.6781)],
    ),
    'masked map prompt': (
        [[0, 3, 5, 6, 2, 4], [0, 5, 2, 2, 2, 2], [5, 5, 2, 2, 4, 2]],
        [(0, 1, 77.0916), (1, 2, 53.9243), (2, 3, 38.5115), (3, 3, 38.5115), (4, 4, 28.2362),
         (5, 5, 1.9536)],
    ),
    'masked none prompt guided seed': (
        [[0, 3, 4, 2, 4, 1], [0, 5, 1, 2, 1, 1], [5, 5, 1, 6, 1, 6]],
        [(0, 2, -443.3233), (1, 4, -432.3327), (2, 6, -434.1741), (3, 8, -453.1916),
         (4, 10, -514.2784)],
    ),
}
# fmt: on


@pytest.mark.parametrize("name", list(CASES))
def test_the_samplers_draw_the_tokens_they_drew_before_the_parts(name):
    out, records = observe(CASES[name])
    frozen_out, frozen_records = FROZEN[name]
    assert out == frozen_out
    assert [r[:2] for r in records] == [r[:2] for r in frozen_records]
    assert [r[2] for r in records] == pytest.approx([r[2] for r in frozen_records], abs=1e-3)


def test_run_with_parts_is_sample_uniform():
    """The parts built by hand and ``run`` give sample_uniform's tokens, draw for draw."""
    filt = Filter(top_p=0.8)
    guidance = Guidance(1.5, {})
    prompt = Prompt(PROMPT, PROMPT_MASK)
    grid = TimeGrid.build(SCHEDULE, 4)
    gen = torch.Generator().manual_seed(3)
    z_1 = prompt(torch.randint(K, (B * L,), generator=gen).view(B, L))
    predict = Predictor(UniformDenoiser(), K, cond=GUIDED["cond"], guidance=guidance,
                        clean=PROMPT_MASK)  # fmt: skip
    z_0 = run(predict, UniformStep(kappa=0.5, filter=filt), grid, z_1,
              finish=Finish("map", filt), prompt=prompt, generator=gen)  # fmt: skip
    expected = sample_uniform(UniformDenoiser(), B, L, 4, schedule=SCHEDULE, vocab_size=K,
                              kappa=0.5, top_p=0.8, tail="map", prompt=PROMPT,
                              prompt_mask=PROMPT_MASK, generator=torch.Generator().manual_seed(3),
                              **GUIDED)  # fmt: skip
    assert torch.equal(z_0, expected)
    assert predict.calls == 2 * (4 + 1)


class UnmaskLeftToRight:
    """A step written here: unmask the leftmost masked token with argmax x_hat, per row."""

    def __init__(self, mask_id: int):
        self.mask_id = mask_id
        self.seen: list[Interval] = []

    def __call__(self, pred: Prediction, z, at: Interval, generator):
        self.seen.append(at)
        masked = z == self.mask_id
        first = masked & (masked.cumsum(-1) == 1)
        best = pred.logits[..., : self.mask_id].argmax(-1)
        return torch.where(first, best, z)


def test_a_step_written_by_a_user_plugs_into_run():
    step = UnmaskLeftToRight(K)
    grid = TimeGrid.build(SCHEDULE, L, tail="none")
    predict = Predictor(masked_denoiser, K + 1, time_conditioned=False, cache=True)
    records: list[StepRecord] = []
    z_1 = torch.full((B, L), K)
    z_0 = run(predict, step, grid, z_1, callback=records.append)
    # The loop handed the step each interval of the grid, in order.
    assert [tuple(at) for at in step.seen] == [tuple(grid.interval(i)) for i in range(L)]
    # An independent computation: position by position, argmax of the denoiser's logits.
    z = z_1.clone()
    for i in range(L):
        z[:, i] = masked_denoiser(z, torch.zeros(B))[:, i, :K].argmax(-1)
    assert torch.equal(z_0, z)
    assert [r.step for r in records] == list(range(L))
    assert torch.equal(records[-1].z_s, z_0)
    # Every step changed a token, so the cache never reused a prediction: one call per step.
    assert [r.nfe for r in records] == list(range(1, L + 1))


def test_the_predictor_reuses_a_prediction_only_while_the_tokens_stand_still():
    calls = []

    def den(z, sigma):
        calls.append(z.clone())
        return masked_denoiser(z, sigma)

    predict = Predictor(den, K + 1, time_conditioned=False, cache=True)
    z = torch.full((B, L), K)
    first = predict(z, 0.3)
    assert predict(z.clone(), 0.6) is first and predict.calls == 1
    z2 = z.clone()
    z2[0, 0] = 1
    assert predict(z2, 0.6) is not first and predict.calls == 2
    # Without the cache, and time-conditioned, every prediction calls the denoiser.
    fresh = Predictor(den, K + 1)
    fresh(z, 0.5), fresh(z, 0.5)
    assert fresh.calls == 2
    with pytest.raises(ValueError, match="cache=True.*time-conditioned"):
        Predictor(den, K + 1, time_conditioned=True, cache=True)


def test_a_masked_step_object_is_sample_masked_draw_for_draw():
    """One loop, two processes: MaskedStep with remasking and a filter, against sample_masked."""
    remask = CappedRemask(SCHEDULE, 0.2)
    filt = Filter(top_k=3)
    gen = torch.Generator().manual_seed(3)
    z_0 = run(Predictor(masked_denoiser, K + 1, time_conditioned=False, cache=True),
              MaskedStep(K, remask=remask, filter=filt), TimeGrid.build(SCHEDULE, 5),
              torch.full((B, L), K), finish=Finish(filter=filt, mask_id=K),
              generator=gen)  # fmt: skip
    expected = sample_masked(masked_denoiser, B, L, 5, schedule=SCHEDULE, vocab_size=K + 1,
                             mask_id=K, remask=remask, top_k=3,
                             generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(z_0, expected)


def test_a_loop_over_blocks_reuses_run_and_the_step_objects():
    """Semi-autoregressive sampling, block by block: each block is a run on the sequence so far,
    the earlier blocks held as a Prompt. Block 0 is sample_masked on its length; block 1 is
    sample_masked on the full length with block 0 as its prompt (the same generator, in turn)."""
    filt, block, steps = Filter(top_k=4), 3, 4
    step, finish = MaskedStep(K, filter=filt), Finish(filter=filt, mask_id=K)
    grid = TimeGrid.build(SCHEDULE, steps)
    gen = torch.Generator().manual_seed(8)
    z = torch.empty(B, 0, dtype=torch.long)
    for end in (block, 2 * block):
        z = torch.cat([z, torch.full((B, block), K)], dim=1)
        held = Prompt(z, torch.arange(end).expand(B, end) < end - block)
        predict = Predictor(masked_denoiser, K + 1, time_conditioned=False, cache=True)
        z = run(predict, step, grid, z, finish=finish, prompt=held, generator=gen)
    assert not (z == K).any()
    ref = torch.Generator().manual_seed(8)
    common = dict(schedule=SCHEDULE, vocab_size=K + 1, mask_id=K, top_k=4, generator=ref)
    first = sample_masked(masked_denoiser, B, block, steps, **common)
    prompt = torch.cat([first, torch.zeros(B, block, dtype=torch.long)], dim=1)
    held = torch.arange(2 * block).expand(B, -1) < block
    both = sample_masked(masked_denoiser, B, 2 * block, steps, prompt=prompt, prompt_mask=held,
                         **common)  # fmt: skip
    assert torch.equal(z[:, :block], first)
    assert torch.equal(z, both)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Filter(top_k=0), ValueError, "top_k"),
        (lambda: Filter(top_k=2.5), ValueError, "top_k"),
        (lambda: Filter(top_p=0.0), ValueError, "top_p"),
        (lambda: Filter(top_p=1.5), ValueError, "top_p"),
        (lambda: Filter(top_p="0.5"), ValueError, "top_p"),
        (lambda: Prompt(torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool)),
         ValueError, r"prompt must be \(B, L\).*Prompt.tokens"),
        (lambda: Prompt(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)),
         TypeError, "Prompt.tokens.*integer"),
        (lambda: Prompt(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)),
         ValueError, "prompt_mask.*bool.*Prompt.mask"),
        (lambda: Prompt(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool)),
         ValueError, r"prompt_mask must be a \(B, L\) = \(2, 3\)"),
        (lambda: Prompt.of(None, torch.ones(2, 3, dtype=torch.bool), (2, 3), 5),
         ValueError, "prompt_mask needs prompt"),
        (lambda: Prompt.of(torch.full((2, 3), 5), None, (2, 3), 5), ValueError, "prompt"),
        (lambda: Guidance(-1.0, {}), ValueError, r"guidance_scale \(Guidance.scale\)"),
        (lambda: Guidance(float("inf"), {}), ValueError, r"guidance_scale \(Guidance.scale\)"),
        (lambda: Guidance(2.0, None), ValueError, r"uncond \(Guidance.uncond\)"),
        (lambda: Guidance.of(None, {}), ValueError, "uncond is only used with guidance_scale"),
        (lambda: Finish("none"), ValueError, r"Finish.kind.*finish=None"),
        (lambda: Finish("greedy", filter=3), ValueError, r"Finish.filter"),
        (lambda: Finish("greedy", mask_id=-1), ValueError, "mask_id"),
        (lambda: UniformStep(kappa=1.5), ValueError, "kappa"),
        (lambda: UniformStep(kappa="0.5"), ValueError, "kappa"),
        (lambda: UniformStep(filter=(3, None)), ValueError, r"UniformStep.filter"),
        (lambda: MaskedStep(-1), ValueError, "mask_id"),
        (lambda: MaskedStep(4, remask=0.1), ValueError, r"remask \(MaskedStep.remask\)"),
        (lambda: MaskedStep(4, filter=None), ValueError, r"MaskedStep.filter"),
    ],
)
def test_each_part_names_the_argument_it_refuses(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_a_schedule_value_out_of_range_is_named_when_the_step_runs():
    grid = TimeGrid.build(SCHEDULE, 2)
    logits = Prediction(torch.zeros(1, 2, K))
    z = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"kappa\(t=1, s=0.5"):
        UniformStep(kappa=lambda t, s: 2.0)(logits, z, grid.interval(0), None)
    # At t = 0.5 -> s = t_min, sigma_max = (1 - alpha_s) / alpha_t ~ 2e-5.
    with pytest.raises(ValueError, match=r"remask\(t=0.5.*sigma_max"):
        MaskedStep(K - 1, remask=lambda t, s: 1e-3)(logits, z, grid.interval(1), None)
