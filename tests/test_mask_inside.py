"""``MaskedDiffusion(K, mask_id=m)``: the mask as an id of the model's own vocabulary (K logits).

Two exact checks on toys whose optimal masked denoiser is known by enumeration
(``discdiff.testing.MaskedOracle``, mask at the extra id): with m = K - 1 the layout is the
default one of K - 1 data ids, so losses, bounds and samples must equal the default's bit for
bit; with the mask in the middle, a relabelled oracle must give the same losses and the data's
law (chi-square, ``P_MIN`` as in tests/test_samplers_laws.py).
"""

from __future__ import annotations

import pytest
import torch

from discdiff import MaskedDiffusion
from discdiff.config import from_dict
from discdiff.testing import MaskedOracle, all_sequences, chi_square_p, random_law, sequence_ids

F64 = torch.float64
P_MIN = 1e-4
MASK = 1  # the mask in the middle of a K = 4 vocabulary: data ids 0, 2, 3
TO_DEFAULT = torch.tensor([0, 3, 1, 2])  # inside id -> the oracle's id (mask -> its extra id 3)
TO_INSIDE = torch.tensor([0, 2, 3, 1])  # the oracle's id -> inside id


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class InsideOracle:
    """``MaskedOracle`` of a law over 3 data ids, relabelled so that the mask is id 1 of 4."""

    def __init__(self, law: torch.Tensor):
        self.oracle = MaskedOracle(law)

    @property
    def calls(self) -> int:
        return self.oracle.calls

    def __call__(self, z_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logits = self.oracle(TO_DEFAULT[z_t], sigma)  # (B, L, 4) in the oracle's order
        return logits[..., TO_DEFAULT]  # column j of the inside order is the oracle's TO_DEFAULT[j]


def test_the_mask_at_the_last_id_is_the_default_layout_bit_for_bit():
    law = random_law(3, 3, seed=0)
    x_0 = all_sequences(3, 3).repeat(3, 1)
    inside, default = MaskedDiffusion(4, mask_id=3), MaskedDiffusion(3)
    assert (inside.mask_id, inside.model_vocab_size) == (default.mask_id, default.model_vocab_size)
    oracle = MaskedOracle(law)
    t = torch.rand(len(x_0), generator=gen(1))
    assert torch.equal(inside.loss(oracle, x_0, t=t, generator=gen(2)),
                       default.loss(oracle, x_0, t=t, generator=gen(2)))  # fmt: skip
    a, b = (d.nelbo(oracle, x_0, t=t, generator=gen(3)) for d in (inside, default))
    assert torch.equal(a.total, b.total)
    prompt = x_0[:20]
    mask = torch.zeros(20, 3, dtype=torch.bool)
    mask[:, 0] = True
    for kw in ({}, {"tail": "none"}, {"cache": False}, {"prompt": prompt, "prompt_mask": mask}):
        assert torch.equal(inside.sample(oracle, 20, 3, 8, seed=4, **kw),
                           default.sample(oracle, 20, 3, 8, seed=4, **kw))  # fmt: skip


def test_a_mask_inside_the_vocabulary_trains_and_bounds_as_the_relabelled_default():
    law = random_law(3, 3, seed=5)
    x_default = all_sequences(3, 3).repeat(3, 1)
    x_inside = TO_INSIDE[x_default]
    inside, default = MaskedDiffusion(4, mask_id=MASK), MaskedDiffusion(3)
    assert (inside.mask_id, inside.model_vocab_size) == (MASK, 4)
    t = torch.rand(len(x_default), generator=gen(6))
    # The corruption draws only survivors, so both see the same masked positions.
    a = inside.loss(InsideOracle(law), x_inside, t=t, generator=gen(7))
    b = default.loss(MaskedOracle(law), x_default, t=t, generator=gen(7))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a = inside.nelbo(InsideOracle(law), x_inside, t=t, generator=gen(8)).total
    b = default.nelbo(MaskedOracle(law), x_default, t=t, generator=gen(8)).total
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mask id"):
        inside.loss(InsideOracle(law), torch.full((2, 3), MASK), generator=gen(9))


@pytest.mark.parametrize("cache", [True, False])
def test_sampling_with_the_mask_inside_draws_the_data_law_and_never_the_mask(cache):
    joint = random_law(3, 2, seed=10)
    inside = MaskedDiffusion(4, mask_id=MASK)
    oracle = InsideOracle(joint)
    x = inside.sample(oracle, 6000, 2, 128, tail="none", cache=cache, generator=gen(11))
    assert not bool((x == MASK).any())
    law = torch.zeros(4, 4, dtype=F64)  # the data law over inside ids
    data = TO_INSIDE[:3]
    law[data[:, None], data[None, :]] = joint
    assert chi_square_p(sequence_ids(x, 4), law) > P_MIN
    # the cache reuses x_hat while no token changed: one row of two tokens changes twice
    one = InsideOracle(joint)
    inside.sample(one, 1, 2, 128, tail="none", cache=cache, generator=gen(15))
    assert (one.calls <= 3) if cache else (one.calls == 128), one.calls
    # the greedy tail fills what is left with the best non-mask id
    y = inside.sample(oracle, 500, 2, 2, generator=gen(12))
    assert not bool((y == MASK).any())


def test_prompts_with_the_mask_inside_sample_the_conditional_law():
    joint = random_law(3, 2, seed=13)
    inside = MaskedDiffusion(4, mask_id=MASK)
    prompt = torch.full((6000, 2), 2)  # inside id 2 = the oracle's 1, at position 0
    mask = torch.zeros(6000, 2, dtype=torch.bool)
    mask[:, 0] = True
    x = inside.sample(InsideOracle(joint), 6000, 2, 3, tail="none", prompt=prompt,
                      prompt_mask=mask, generator=gen(14))  # fmt: skip
    assert bool((x[:, 0] == 2).all())
    given = torch.zeros(4, dtype=F64)
    given[TO_INSIDE[:3]] = joint[1] / joint[1].sum()  # one free position: exact at any step count
    assert chi_square_p(x[:, 1], given) > P_MIN
    with pytest.raises(ValueError, match="prompt holds the mask token"):
        inside.sample(InsideOracle(joint), 2, 2, 3, prompt=torch.full((2, 2), MASK),
                      prompt_mask=mask[:2])  # fmt: skip


def test_the_mask_id_round_trips_and_is_checked():
    inside = MaskedDiffusion(50, mask_id=7, time_conditioned=True)
    again = from_dict(inside.to_dict())
    assert (again.mask_id, again.model_vocab_size, again.vocab_size) == (7, 50, 50)
    default = from_dict(MaskedDiffusion(50).to_dict())
    assert (default.mask_id, default.model_vocab_size) == (50, 51)
    old = {k: v for k, v in MaskedDiffusion(50).to_dict().items() if k != "mask_id"}
    assert from_dict(old).model_vocab_size == 51  # a config written before mask_id
    assert MaskedDiffusion(50, mask_id=50).model_vocab_size == 51  # K itself: the extra id
    for bad in (-1, 51, 2.0, True):
        with pytest.raises(ValueError, match="mask_id must be an id of the model's vocabulary"):
            MaskedDiffusion(50, mask_id=bad)
    with pytest.raises(ValueError, match="two data ids besides the mask"):
        MaskedDiffusion(2, mask_id=0)
