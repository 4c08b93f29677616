"""Decoding policies (discdiff.samplers.policies): the rules on hand-made predictions, the
transformers entropy-bound sampler draw for draw, LLaDA's step counts, runs on a toy law and
the limits of the thresholds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff.samplers import Interval, Prediction, Predictor, TimeGrid, run
from discdiff.samplers.policies import (
    ConfidenceStep,
    EntropyBoundStep,
    LowConfidenceStep,
    entropy_bound_accept,
    low_confidence_counts,
)
from discdiff.schedules import LogLinearSchedule
from discdiff.testing import ExactMaskedDenoiser, MarkovChain

MID = Interval(0.5, 0.25, 0.5, 0.75)  # a step t -> s that is not the last
LAST = Interval(0.25, 0.0, 0.75, 1.0)


def _brute_accept(entropy: list[float], bound: float) -> set[int]:
    """The largest prefix of the ascending order whose sum - max <= bound, by enumeration."""
    order = sorted(range(len(entropy)), key=lambda i: entropy[i])
    best = 0
    for k in range(1, len(order) + 1):
        hs = [entropy[i] for i in order[:k]]
        if sum(hs) - max(hs) <= bound:
            best = k
    return set(order[:best])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=8, unique=True),
       st.floats(0.01, 4.0))  # fmt: skip
def test_entropy_bound_accept_is_the_largest_prefix(entropy, bound):
    got = entropy_bound_accept(torch.tensor([entropy], dtype=torch.float64), bound)[0]
    assert set(got.nonzero().flatten().tolist()) == _brute_accept(entropy, bound)


def test_entropy_bound_accept_hand_made():
    h = torch.tensor([[0.05, 0.3, 0.01, 0.04]], dtype=torch.float64)
    # ascending 0.01, 0.04, 0.05, 0.3: sum - max = 0, 0.01, 0.05, 0.10
    assert entropy_bound_accept(h, 0.08).tolist() == [[True, False, True, True]]
    assert entropy_bound_accept(h, 1e-9).tolist() == [[False, False, True, False]]


def _peaked_logits(k: int = 6) -> torch.Tensor:
    """Row 0: position 0 nearly certain of class 4, position 1 flat, position 2 two-way."""
    logits = torch.zeros(1, 3, k, dtype=torch.float64)
    logits[0, 0, 4] = 40.0
    logits[0, 2, :2] = 10.0
    return logits


def test_entropy_bound_step_accepts_the_confident_and_renoises_the_rest():
    step = EntropyBoundStep(entropy_bound=0.5, temperature_max=1.0, temperature_min=1.0)
    z = torch.tensor([[0, 1, 2]])
    g = torch.Generator().manual_seed(0)
    out = step(Prediction(_peaked_logits()), z, MID, g)
    # entropies: ~0, log 6, ~log 2 -> sorted sums - max: 0, ~0, ~log2 + ~0 > 0.5 only at the flat
    assert out[0, 0] == 4 and out[0, 2] in (0, 1)
    g = torch.Generator().manual_seed(0)
    k = 6
    torch.multinomial(torch.softmax(_peaked_logits().float(), -1).view(-1, k), 1, generator=g)
    noise = torch.randint(0, k, (1, 3), generator=g)
    assert out[0, 1] == noise[0, 1]  # renoised with the second draw
    assert (step.tally.calls, step.tally.committed, step.tally.per_call) == (1, 2, 2.0)
    step.tally.reset()
    assert (step.tally.calls, step.tally.per_call) == (0, 0.0)


def test_entropy_bound_step_last_step_is_the_tempered_argmax():
    step = EntropyBoundStep()
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    out = step(Prediction(logits), torch.zeros(2, 5, dtype=torch.long), LAST, None)
    assert torch.equal(out, logits.argmax(-1))


@pytest.mark.parametrize("bound, expect", [(1e9, 5), (1e-12, 1)])
def test_entropy_bound_extremes(bound, expect):
    """An unbounded bound accepts every candidate (each token drawn independently from its
    tempered marginal, in one call); a vanishing one accepts one token per row per call."""
    step = EntropyBoundStep(entropy_bound=bound)
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2))
    step(Prediction(logits), torch.zeros(3, 5, dtype=torch.long), MID, torch.Generator())
    assert step.tally.committed == 3 * expect


def test_entropy_bound_step_is_transformers_sampler_draw_for_draw():
    """Same seed, same canvas: transformers' EntropyBoundSampler (global RNG) and the step."""
    gen_mod = pytest.importorskip("transformers.models.diffusion_gemma.generation_diffusion_gemma")
    b, ln, k, n = 2, 6, 11, 4
    logits = torch.randn(b, ln, k, generator=torch.Generator().manual_seed(3)) * 3
    canvas = torch.randint(0, k, (b, ln), generator=torch.Generator().manual_seed(4))
    cfg = gen_mod.EntropyBoundSamplerConfig(entropy_bound=0.7)
    proc = gen_mod.LinearTemperatureScheduleLogitsProcessor(0.4, 0.8, n)
    grid = TimeGrid.build(LogLinearSchedule(), n, tail="none")
    step = EntropyBoundStep(entropy_bound=0.7)
    for i, cur in enumerate(reversed(range(1, n + 1))):
        sampler = gen_mod.EntropyBoundSampler(cfg, ln, k, n)
        torch.manual_seed(10 + i)
        processed = proc(None, logits, torch.tensor(cur, dtype=torch.int32))
        probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
        drawn = torch.multinomial(probs.view(-1, k), num_samples=1).view(b, ln)
        accepted = sampler.accept_canvas(canvas, drawn, processed, cur)
        theirs = sampler.renoise_canvas(accepted, cur)
        torch.manual_seed(10 + i)
        ours = step(Prediction(logits), canvas, grid.interval(i), None)
        if i == n - 1:
            assert torch.equal(ours, processed.argmax(-1))
        else:
            assert torch.equal(ours, theirs)
        assert torch.equal(step.tempered(logits, grid.interval(i).t), processed)


def _candidate_logits() -> torch.Tensor:
    """K = 4 plus the mask (id 4); confidences 0.95, 0.5, 0.92 at positions 0..2."""
    probs = torch.tensor([[[0.95, 0.05, 0.0, 0.0], [0.5, 0.3, 0.2, 0.0],
                           [0.04, 0.92, 0.04, 0.0], [0.25, 0.25, 0.25, 0.25]]])  # fmt: skip
    logits = torch.log(probs.to(torch.float64))
    return torch.cat([logits, torch.zeros(1, 4, 1, dtype=torch.float64)], -1)


@pytest.mark.parametrize("tau, expect", [
    (0.9, [0, 4, 1, 3]), (0.99, [0, 4, 4, 3]), (0.0, [0, 0, 1, 3]), (0.93, [0, 4, 4, 3]),
])  # fmt: skip
def test_confidence_step_hand_made(tau, expect):
    z = torch.tensor([[4, 4, 4, 3]])  # position 3 already clean
    out = ConfidenceStep(mask_id=4, threshold=tau)(Prediction(_candidate_logits()), z, MID, None)
    assert out.tolist() == [expect]


def test_confidence_step_fills_every_mask_at_the_last_step():
    z = torch.tensor([[4, 4, 4, 3]])
    out = ConfidenceStep(mask_id=4, threshold=2.0)(Prediction(_candidate_logits()), z, LAST, None)
    assert out.tolist() == [[0, 0, 1, 3]]


def _llada_counts(m: int, n: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens for one row: m masks over n steps."""
    base, rem = divmod(m, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16])
def test_low_confidence_counts_are_llada_schedule_on_a_linspace_grid(n):
    grid = TimeGrid.build(LogLinearSchedule(), n, tail="none")
    for m in range(0, 40):
        left, got = torch.tensor([m]), []
        for i in range(n):
            at = grid.interval(i)
            c = int(low_confidence_counts(left, at.alpha_s, at.alpha_t)[0])
            got.append(c)
            left = left - c
        assert got == _llada_counts(m, n), (m, n)


def test_low_confidence_step_unmasks_the_most_confident():
    z = torch.tensor([[4, 4, 4, 3]])
    at = Interval(1.0, 1 / 3, 0.0, 2 / 3)  # share 2/3 of 3 masks -> 2
    out = LowConfidenceStep(mask_id=4)(Prediction(_candidate_logits()), z, at, None)
    assert out.tolist() == [[0, 4, 1, 3]]


def _masked_run(step, steps, records=None):
    law = MarkovChain.peaked(5, seed=1)
    predict = Predictor(ExactMaskedDenoiser(law), 6, time_conditioned=False)
    grid = TimeGrid.build(LogLinearSchedule(), steps, tail="none")
    z = torch.full((8, 12), 5, dtype=torch.long)
    cb = None if records is None else records.append
    return run(predict, step, grid, z, callback=cb, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("make", [
    lambda: ConfidenceStep(mask_id=5, threshold=0.9),
    lambda: LowConfidenceStep(mask_id=5),
    lambda: LowConfidenceStep(mask_id=5, temperature=1.0),
])  # fmt: skip
def test_masked_policies_run_on_a_toy_to_a_clean_sample(make):
    step = make()
    out = _masked_run(step, 6)
    assert out.shape == (8, 12) and bool((out < 5).all())
    assert step.tally.calls == 6 and step.tally.committed == 8 * 12


def test_confidence_extremes_one_step_or_one_token_per_step():
    records = []
    step = ConfidenceStep(mask_id=5, threshold=0.0)
    _masked_run(step, 6, records)
    assert bool((records[0].z_s < 5).all())  # tau -> 0: everything in the first call
    step = ConfidenceStep(mask_id=5, threshold=1.5)
    records = []
    _masked_run(step, 6, records)
    left = [int((r.z_s == 5).sum()) for r in records]
    assert left == [8 * (12 - i) for i in range(1, 6)] + [0]  # tau > 1: one per row per call


def test_llada_with_one_step_per_token_is_one_at_a_time():
    records = []
    _masked_run(LowConfidenceStep(mask_id=5), 12, records)
    assert [int((r.z_s == 5).sum()) for r in records] == [8 * (11 - i) for i in range(12)]


def test_policies_name_bad_arguments():
    with pytest.raises(ValueError, match="entropy_bound"):
        EntropyBoundStep(entropy_bound=0.0)
    with pytest.raises(ValueError, match="temperature_min"):
        EntropyBoundStep(temperature_min=0.9, temperature_max=0.5)
    with pytest.raises(ValueError, match="threshold"):
        ConfidenceStep(mask_id=1, threshold=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        LowConfidenceStep(mask_id=1, temperature=-0.5)
    from discdiff.samplers import RowStream

    with pytest.raises(ValueError, match="torch.Generator"):
        EntropyBoundStep()(Prediction(torch.zeros(1, 2, 3)), torch.zeros(1, 2, dtype=torch.long),
                           MID, RowStream(0, 2))  # fmt: skip
    assert math.isfinite(EntropyBoundStep().entropy_bound)
