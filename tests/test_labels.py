"""Laws of ``LabelDropout`` (classifier-free guidance's training half): each row's label becomes
the null label (id ``num_classes``) with probability p, independently, in training mode only;
bad arguments raise errors that name them."""

from __future__ import annotations

import math

import pytest
import torch

from discdiff import LabelDropout

N = 40_000


def _labels(num_classes: int, n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("num_classes", "p"), [(3, 0.1), (1, 0.5), (10, 0.02)])
def test_the_drop_rate_is_p_within_a_binomial_bound(num_classes, p):
    labels = _labels(num_classes)
    dropped = LabelDropout(num_classes, p)(labels, torch.Generator().manual_seed(1))
    null = dropped == num_classes
    # The count of dropped rows is Binomial(N, p): 5 standard deviations bound it (a false
    # alarm about once in 1.7 million runs, and the seeds are fixed).
    assert abs(int(null.sum()) - N * p) <= 5 * math.sqrt(N * p * (1 - p))
    assert torch.equal(dropped[~null], labels[~null])  # every other row keeps its own label
    assert dropped.dtype == labels.dtype and dropped.shape == labels.shape


def test_the_null_label_is_num_classes_and_stays_null():
    labels = torch.tensor([0, 1, 2, 3, 3])  # 3: already the null label of 3 classes
    assert torch.equal(LabelDropout(3, 1.0)(labels), torch.full((5,), 3))
    kept = LabelDropout(3, 0.5)(labels, torch.Generator().manual_seed(0))
    assert bool(((kept == labels) | (kept == 3)).all()) and bool((kept[3:] == 3).all())


def test_rows_drop_independently_with_the_generator():
    labels = _labels(4, n=64)
    a = LabelDropout(4, 0.5)(labels, torch.Generator().manual_seed(7))
    b = LabelDropout(4, 0.5)(labels, torch.Generator().manual_seed(7))
    c = LabelDropout(4, 0.5)(labels, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one uniform per row, dropped below p: the same rows as drawing them by hand
    u = torch.rand(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a == 4, u < 0.5)


def test_eval_mode_never_drops_and_draws_nothing():
    dropout = LabelDropout(3, 1.0).eval()
    labels = _labels(3, n=100)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert dropout(labels, gen) is labels
    assert torch.equal(gen.get_state(), state)
    assert bool((dropout.train()(labels, gen) == 3).all())  # back in training it drops again


def test_p_zero_draws_nothing():
    labels = _labels(3, n=10)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert LabelDropout(3, 0.0)(labels, gen) is labels
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 0.1), "num_classes"), ((2.0, 0.1), "num_classes"), ((3, 1.5), "p is a drop"),
     ((3, -0.1), "p is a drop"), ((3, "0.1"), "p must be a number")],
)  # fmt: skip
def test_bad_settings_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        LabelDropout(*args)


def test_bad_labels_name_the_argument():
    dropout = LabelDropout(3, 0.1)
    with pytest.raises(ValueError, match=r"label holds token ids in \[0, 4\]"):
        dropout(torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="label must hold integer"):
        dropout(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"label must be a \(B,\) tensor"):
        dropout(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="generator"):
        dropout(torch.tensor([0, 1]), 5)
