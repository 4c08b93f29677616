"""discdiff.samplers.decode: the exact samplers' samples for the same generator, the calls each
sample needed counted against independent bookkeeping, the posterior a policy reads against
Bayes with the explicit likelihood, and the refusals."""

from __future__ import annotations

import pytest
import torch

from discdiff.samplers import (
    ConfidenceStep,
    Decoding,
    EntropyBoundStep,
    LowConfidenceStep,
    MaskedStep,
    Prediction,
    Predictor,
    TimeGrid,
    UniformStep,
    decode,
    run,
    sample_masked,
    sample_uniform,
)
from discdiff.schedules import LogLinearSchedule
from discdiff.testing import ExactDenoiser, ExactMaskedDenoiser, MarkovChain

K, L, N = 5, 6, 9
LAW = MarkovChain.peaked(K, seed=1)
SCHEDULE = LogLinearSchedule()


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("tail", ["none", "greedy", "map"])
def test_the_exact_uniform_decoder_is_sample_uniform(tail):
    duo = ExactDenoiser(LAW)
    out = decode(Decoding("a", UniformStep(kappa=0.7), 4, tail), duo, N, L, schedule=SCHEDULE,
                 vocab_size=K, generator=_gen())  # fmt: skip
    ref = sample_uniform(duo, N, L, 4, schedule=SCHEDULE, vocab_size=K, tail=tail, kappa=0.7,
                         generator=_gen())  # fmt: skip
    assert torch.equal(out.samples, ref)
    calls = 4 + (tail != "none")  # every call counts for the uniform process
    assert out.nfe.tolist() == [float(calls)] * N
    assert out.mean_nfe == calls and out.tokens_per_forward == pytest.approx(L / calls, rel=1e-15)


@pytest.mark.parametrize("tail", ["none", "greedy"])
def test_the_exact_masked_decoder_is_sample_masked_and_counts_each_rows_calls(tail):
    """With the cache, a row needs one call per masked state it passes through: the number of
    distinct steps at which its positions were unmasked (read from sample_masked's own run)."""
    mdlm = ExactMaskedDenoiser(LAW)
    out = decode(Decoding("m", MaskedStep(K), 12, tail), mdlm, N, L, schedule=SCHEDULE,
                 vocab_size=K + 1, mask_id=K, generator=_gen())  # fmt: skip
    first_clean = torch.full((N, L), -1)

    def watch(record):
        newly = (record.z_s != K) & (first_clean < 0)
        first_clean[newly] = record.step

    ref = sample_masked(mdlm, N, L, 12, schedule=SCHEDULE, vocab_size=K + 1, mask_id=K,
                        tail=tail, callback=watch, generator=_gen())  # fmt: skip
    assert torch.equal(out.samples, ref) and bool((first_clean >= 0).all())
    expected = [float(len(set(row.tolist()))) for row in first_clean]
    assert out.nfe.tolist() == expected
    assert max(expected) < 12  # the count is not the step count: the cache saved calls
    assert out.tokens_per_forward == pytest.approx(N * L / sum(expected), rel=1e-15)


class _TimeConditioned(torch.nn.Module):
    """The exact masked denoiser declared time-conditioned: no cache, every call of a row that
    still holds a mask counts; calls on finished rows do not."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ExactMaskedDenoiser(LAW)

    def forward(self, z, sigma):
        return self.inner(z, sigma)


def test_without_the_cache_a_row_stops_costing_calls_once_it_has_no_mask():
    """Replayed through ``run`` with the same draws: the batch makes all 10 calls, a row needs
    the calls up to the one after which it holds no mask."""
    step = ConfidenceStep(K, 1.0, threshold=0.3)
    out = decode(Decoding("c", step, 10), _TimeConditioned(), N, L, schedule=SCHEDULE,
                 vocab_size=K + 1, mask_id=K, time_conditioned=True,
                 generator=_gen())  # fmt: skip
    finished = torch.full((N,), -1)
    calls = []

    def watch(record):
        calls.append(record.nfe)
        done = ~(record.z_s == K).any(-1) & (finished < 0)
        finished[done] = record.step

    z = run(Predictor(_TimeConditioned(), K + 1, time_conditioned=True, convert=False),
            ConfidenceStep(K, 1.0, threshold=0.3), TimeGrid.build(SCHEDULE, 10, tail="none"),
            torch.full((N, L), K), callback=watch, generator=_gen())  # fmt: skip
    assert torch.equal(z, out.samples) and calls == list(range(1, 11))
    assert out.nfe.tolist() == (finished + 1).double().tolist()
    assert float(out.nfe.max()) < 10  # the threshold finished every row early
    assert step.tally.calls == 10 and step.tally.committed == N * L


class _FixedXHat(torch.nn.Module):
    """Float64 x_hat logits that depend on the position only."""

    def __init__(self, parameterization: str = "x_hat") -> None:
        super().__init__()
        self.logits = torch.randn(L, K, generator=_gen(7), dtype=torch.float64)
        self.parameterization = parameterization

    def forward(self, z, sigma):
        return self.logits.expand(z.shape[0], L, K).clone()


class _Spy:
    """A step that keeps what it was shown and leaves the tokens as they are."""

    def __init__(self) -> None:
        self.shown: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def __call__(self, pred: Prediction, z, at, generator):
        self.shown.append((pred.logits, z.clone(), at.alpha_t))
        return z.clone()


def test_a_posterior_reading_step_sees_bayes_with_the_explicit_likelihood():
    """p(x | z_t) = x_hat(x) q(z_t | x) / sum, q(z | x) = alpha [x = z] + (1 - alpha) / K:
    computed here in float64 from the explicit (K, K) transition matrix."""
    model, spy = _FixedXHat(), _Spy()
    decode(Decoding("p", spy, 3, reads="posterior"), model, 2, L, schedule=SCHEDULE,
           vocab_size=K, generator=_gen())  # fmt: skip
    assert len(spy.shown) == 3
    x_hat = torch.softmax(model.logits, -1)
    for logits, z, alpha in spy.shown:
        q = alpha * torch.eye(K, dtype=torch.float64) + (1 - alpha) / K  # q[x, z]
        joint = x_hat.unsqueeze(0) * q[:, z].permute(1, 2, 0)  # (B, L, K): x_hat(x) q(z | x)
        bayes = joint / joint.sum(-1, keepdim=True)
        assert torch.allclose(logits.exp(), bayes, rtol=1e-12, atol=1e-15)
    # a posterior denoiser is shown as it is; an x_hat-reading step sees x_hat
    post, spy2 = _FixedXHat("posterior"), _Spy()
    decode(Decoding("p", spy2, 2, reads="posterior"), post, 2, L, schedule=SCHEDULE,
           vocab_size=K, generator=_gen())  # fmt: skip
    assert all(torch.equal(lg, post.logits.expand(2, L, K)) for lg, _, _ in spy2.shown)
    spy3 = _Spy()
    decode(Decoding("x", spy3, 2), model, 2, L, schedule=SCHEDULE, vocab_size=K)
    assert all(torch.equal(lg, model.logits.expand(2, L, K)) for lg, _, _ in spy3.shown)


def test_batches_and_policies_add_up():
    step = LowConfidenceStep(K, 1.0)
    out = decode(Decoding("l", step, L), ExactMaskedDenoiser(LAW), 7, L, schedule=SCHEDULE,
                 vocab_size=K + 1, mask_id=K, batch_size=3, generator=_gen())  # fmt: skip
    assert out.samples.shape == (7, L) and bool((out.samples < K).all())
    # LLaDA's schedule on L steps unmasks one token per step: every row needs L calls
    assert out.nfe.tolist() == [float(L)] * 7 and step.tally.committed == 7 * L
    eb = EntropyBoundStep(0.5)
    again = decode(Decoding("e", eb, 3, reads="posterior"), ExactDenoiser(LAW), 5, L,
                   schedule=SCHEDULE, vocab_size=K, batch_size=2, generator=_gen())  # fmt: skip
    assert again.nfe.tolist() == [3.0] * 5 and eb.tally.calls == 3 * 3  # 3 batches


@pytest.mark.parametrize("make, message", [
    (lambda: Decoding("x", UniformStep(), 0), "steps"),
    (lambda: Decoding("x", UniformStep(), 4, tail="last"), "tail"),
    (lambda: Decoding("x", UniformStep(), 4, reads="logits"), "reads"),
])  # fmt: skip
def test_a_bad_decoding_is_refused_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_decode_refuses_a_mask_outside_the_vocabulary_and_a_masked_posterior():
    mdlm = ExactMaskedDenoiser(LAW)
    with pytest.raises(ValueError, match="counts the mask"):
        decode(Decoding("m", MaskedStep(K), 4), mdlm, 2, L, schedule=SCHEDULE, vocab_size=K,
               mask_id=K)  # fmt: skip
    with pytest.raises(ValueError, match="leave reads='x_hat'"):
        decode(Decoding("m", MaskedStep(K), 4, reads="posterior"), mdlm, 2, L,
               schedule=SCHEDULE, vocab_size=K + 1, mask_id=K)  # fmt: skip
