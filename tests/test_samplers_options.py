"""Where two sampler options meet: filters in the tails, guidance with nuclei that do not overlap.

Every expectation is computed independently of the samplers: the nucleus by a full sort in
float64 and the guided law as the renormalised product x_c^gamma x_u^(1 - gamma) of the filtered
predictions (``discdiff.testing.filtered_law`` / ``guided_law``), the MAP tail as the argmax of
the explicit denoising posterior (``denoising_posterior``, Concepts §5).
"""

from __future__ import annotations

import math

import pytest
import torch

from discdiff.samplers import (
    StepRecord,
    denoising_posterior,
    greedy_tail,
    guided_masked_step,
    guided_uniform_step,
    map_tail,
    sample_masked,
    sample_uniform,
)
from discdiff.samplers.grid import T_MIN
from discdiff.testing import filtered_law as filtered
from discdiff.testing import guided_law as guided
from tests.test_samplers_laws import SCHEDULE, alpha, gen

F64 = torch.float64
K = 6


class LabelDenoiser:
    """Deterministic logits from a table per label: the token, its left neighbour, its position."""

    def __init__(self, vocab_size: int, length: int, scale: float = 2.0):
        g = gen(7)
        self.table = torch.randn(3, vocab_size, vocab_size, generator=g, dtype=F64) * scale
        self.position = torch.randn(length, vocab_size, generator=g, dtype=F64)

    def __call__(self, z_t, sigma, label=None):
        which = 2 if label is None else int(label)
        t = self.table[which]
        return t[z_t] + 0.5 * t[z_t.roll(1, -1)] + self.position[: z_t.shape[1]]


class LastState:
    """A callback keeping the state the tail call starts from (the last step's z_s)."""

    def __init__(self, steps: int):
        self.steps, self.z = steps, None

    def __call__(self, record: StepRecord) -> None:
        if record.step == self.steps - 1:
            self.z = record.z_s.clone()


def expected_tail(
    model: LabelDenoiser, z: torch.Tensor, tail: str, top_k, top_p, gamma: float | None
) -> torch.Tensor:
    """The tail's output from the state z at t_min, computed from the explicit laws."""
    a = alpha(T_MIN)
    sigma = torch.full((z.shape[0],), -math.log(a))
    c = filtered(torch.softmax(model(z, sigma, label=0), -1), top_k, top_p)
    x_hat = c if gamma is None else guided(c, filtered(torch.softmax(model(z, sigma), -1),
                                                       top_k, top_p), gamma)  # fmt: skip
    law = x_hat if tail == "greedy" else denoising_posterior(x_hat, z, a)
    return law.argmax(-1)


@pytest.mark.parametrize(
    "tail, top_k, top_p, gamma",
    [
        ("map", 1, None, None),  # the audit: 1621 of 8000 tokens off the only class left
        ("map", None, 0.3, None),
        ("map", None, 0.3, 1.0),  # the audit: 1713 / 8000 off the filtered mode
        ("greedy", None, 0.3, 2.0),  # the audit: 1182 / 8000
        ("map", 2, 0.5, 3.0),
    ],
)
def test_the_tails_return_the_mode_of_the_filtered_law(tail, top_k, top_p, gamma):
    length, steps = 8, 4
    model = LabelDenoiser(K, length)
    last = LastState(steps)
    guidance = {} if gamma is None else {"guidance_scale": gamma, "uncond": {}}
    out = sample_uniform(
        model, 1000, length, steps, schedule=SCHEDULE, vocab_size=K, tail=tail, top_k=top_k,
        top_p=top_p, cond={"label": torch.tensor(0)}, callback=last, generator=gen(3),
        **guidance,
    )  # fmt: skip
    want = expected_tail(model, last.z, tail, top_k, top_p, gamma)
    assert int((out != want).sum()) == 0


def test_a_filter_that_removes_z_t_moves_the_map_tail():
    logits = torch.tensor([0.5, 0.3, 0.2], dtype=F64).log().view(1, 1, 3)
    z_t = torch.tensor([[1]])
    assert int(map_tail(logits, z_t, 0.99)) == 1  # strong evidence keeps z_t unfiltered
    assert int(map_tail(logits, z_t, 0.99, top_k=1)) == 0  # the filter leaves only class 0
    assert int(map_tail(logits, z_t, 0.99, top_p=0.5)) == 0
    assert int(map_tail(logits, z_t, 0.99, top_p=0.6)) == 1  # z_t inside the nucleus


def test_greedy_tail_under_guidance_is_the_mode_of_the_filtered_guided_law():
    c = torch.randn(4, 16, K, generator=gen(11), dtype=F64) * 2
    u = torch.randn(4, 16, K, generator=gen(12), dtype=F64) * 2
    for gamma, top_k, top_p in [(0.0, None, None), (1.5, None, 0.4), (3.0, 3, None)]:
        got = greedy_tail(c, top_k=top_k, top_p=top_p, uncond=u, guidance_scale=gamma)
        want = guided(filtered(c.softmax(-1), top_k, top_p),
                      filtered(u.softmax(-1), top_k, top_p), gamma).argmax(-1)  # fmt: skip
        assert torch.equal(got, want)


def disjoint_predictions(b: int, length: int, k: int, mask_id: int | None = None):
    """Conditional logits peaked on class 0, unconditional on class 1: at top_p = 0.3 their
    nuclei are {0} and {1}, which share no class."""
    c = torch.full((b, length, k), -3.0, dtype=F64)
    u = c.clone()
    c[..., 0], u[..., 1] = 3.0, 3.0
    if mask_id is not None:
        c[..., mask_id] = u[..., mask_id] = -torch.inf
    return c, u


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_masked_guidance_with_disjoint_nuclei_follows_the_conditional_nucleus(gamma):
    k, mask_id = 5, 4
    c, u = disjoint_predictions(64, 3, k, mask_id)
    z = torch.full((64, 3), mask_id)
    step = guided_masked_step(c, u, z, 1.0, 0.0, gamma, mask_id=mask_id, top_p=0.3,
                              generator=gen(1))  # fmt: skip
    assert bool((step == 0).all())  # alpha 0 -> 1: every mask unmasks, into the conditional's
    half = guided_masked_step(c, u, z, 0.5, 0.0, gamma, mask_id=mask_id, top_p=0.3,
                              generator=gen(2))  # fmt: skip
    assert set(half.unique().tolist()) == {0, mask_id}  # p_unmask = 1/2 for these tokens
    denoiser = lambda z_t, sigma, label=None: (c if label is not None else u)[: z_t.shape[0]]
    for tail in ("none", "greedy"):
        out = sample_masked(
            denoiser, 64, 3, 4, schedule=SCHEDULE, vocab_size=k, mask_id=mask_id, tail=tail,
            top_p=0.3, cond={"label": 0}, guidance_scale=gamma, uncond={}, generator=gen(3),
        )  # fmt: skip
        assert bool((out == 0).all())


def test_uniform_guidance_with_disjoint_nuclei_at_the_last_step_follows_the_conditional():
    # At alpha_s = 1 the uniform component is gone: q_c and q_u live on {z_t} and their nuclei.
    c, u = disjoint_predictions(64, 3, K)
    z = torch.full((64, 3), 4)  # inside neither nucleus
    out = guided_uniform_step(c, u, z, 1.0, 0.5, 2.0, top_p=0.3, generator=gen(4))
    assert bool((out == 0).all())
    out = map_tail(c, z, alpha(T_MIN), top_p=0.3, uncond=u, guidance_scale=2.0)
    assert bool((out == 0).all())


def _report() -> None:  # pragma: no cover - a measurement, run by hand
    """Tokens off the filtered mode in the tails (8000 tokens per configuration) and the outcome
    of guidance with disjoint nuclei: ``python -m tests.test_samplers_options``."""
    length, steps, n = 8, 4, 1000
    for tail, top_k, top_p, gamma in [("map", 1, None, None), ("map", None, 0.3, 1.0),
                                      ("greedy", None, 0.3, 2.0)]:  # fmt: skip
        model, last = LabelDenoiser(K, length), LastState(steps)
        guidance = {} if gamma is None else {"guidance_scale": gamma, "uncond": {}}
        out = sample_uniform(
            model, n, length, steps, schedule=SCHEDULE, vocab_size=K, tail=tail, top_k=top_k,
            top_p=top_p, cond={"label": torch.tensor(0)}, callback=last, generator=gen(3),
            **guidance,
        )  # fmt: skip
        off = int((out != expected_tail(model, last.z, tail, top_k, top_p, gamma)).sum())
        print(f"tail {tail}, top_k={top_k}, top_p={top_p}, guidance_scale={gamma}: "
              f"{off} of {out.numel()} tokens off the filtered mode")  # fmt: skip
    k, mask_id = 5, 4
    c, u = disjoint_predictions(64, 3, k, mask_id)
    denoiser = lambda z_t, sigma, label=None: (c if label is not None else u)[: z_t.shape[0]]
    try:
        out = sample_masked(denoiser, 64, 3, 4, schedule=SCHEDULE, vocab_size=k, mask_id=mask_id,
                            tail="none", top_p=0.3, cond={"label": 0}, guidance_scale=2.0,
                            uncond={}, generator=gen(3))  # fmt: skip
        print(f"masked guidance, disjoint nuclei: tokens {sorted(set(out.flatten().tolist()))} "
              "(the conditional nucleus is {0})")
    except Exception as error:  # noqa: BLE001 - the report shows whatever happens
        print(f"masked guidance, disjoint nuclei: {type(error).__name__}: {error}")


if __name__ == "__main__":  # pragma: no cover
    _report()
