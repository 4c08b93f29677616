"""discdiff.typing: the value checks (each error names its argument), ``unchecked``, the
``typechecked`` decorator, the ``Bag`` input and the ``Denoiser`` protocol."""

# No `from __future__ import annotations`: the decorated functions below keep real annotations.

import dataclasses
import math
from fractions import Fraction
from typing import Literal

import numpy as np
import pytest
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

import discdiff.typing as typing_module
from discdiff.typing import (
    Bag,
    Denoiser,
    as_float,
    check_count,
    check_finite,
    check_logits,
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    reject_if,
    typechecked,
    unchecked,
)

# ------------------------------------------------------------------------------ check_tokens


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_check_tokens_accepts_ids_in_range(dtype):
    check_tokens(torch.tensor([[0, 4], [2, 1]], dtype=dtype), 5, "z_t")
    check_tokens(torch.empty(0, 3, dtype=dtype), 5, "z_t")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_check_tokens_rejects_non_integer_dtypes(dtype):
    with pytest.raises(TypeError, match=r"z_t must hold integer token ids.*" + str(dtype)):
        check_tokens(torch.zeros(2, 3, dtype=dtype), 5, "z_t")


@pytest.mark.parametrize("bad, lo, hi", [(5, 0, 5), (-1, -1, 3), (7, 0, 7)])
def test_check_tokens_rejects_ids_out_of_range(bad, lo, hi):
    x = torch.tensor([[0, 3], [bad, 1]])
    with pytest.raises(ValueError, match=rf"x_0 holds token ids in \[{lo}, {hi}\].*vocab_size=5"):
        check_tokens(x, 5, "x_0")


def test_check_tokens_costs_one_host_decision():
    before = typing_module.host_checks
    check_tokens(torch.randint(0, 5, (4, 8)), 5, "x_0")
    assert typing_module.host_checks == before + 1


# ------------------------------------------------------------------------------- check_range


@pytest.mark.parametrize("x", [0.0, 0.5, 1.0, torch.tensor([0.0, 0.3, 1.0]), torch.empty(0)])
def test_check_range_accepts_the_closed_interval(x):
    check_range(x, "alpha_t", 0.0, 1.0)


@pytest.mark.parametrize(
    "x", [-0.1, 1.5, math.nan, math.inf, torch.tensor([0.5, 1.2]), torch.tensor([math.nan])]
)
def test_check_range_rejects_values_outside_or_not_finite(x):
    with pytest.raises(ValueError, match=r"alpha_t must lie in \[0.0, 1.0\]"):
        check_range(x, "alpha_t", 0.0, 1.0)


@pytest.mark.parametrize("x", [0.0, torch.tensor([0.5, 0.0])])
def test_check_range_open_lo_excludes_the_lower_end(x):
    with pytest.raises(ValueError, match=r"top_p must lie in \(0.0, 1.0\], got 0.0"):
        check_range(x, "top_p", 0.0, 1.0, open_lo=True)
    check_range(1.0, "top_p", 0.0, 1.0, open_lo=True)


def test_check_range_reports_the_first_bad_value():
    with pytest.raises(ValueError, match=r"kappa must lie in \[0.0, 1.0\], got 2.5"):
        check_range(torch.tensor([0.2, 2.5, -3.0]), "kappa", 0.0, 1.0)


# ------------------------------------------------------------------------------ check_finite


def test_check_finite_allows_minus_inf_logits():
    check_finite(torch.tensor([0.0, -math.inf, 3.0]), "logits")
    check_finite(torch.empty(0), "logits")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_check_finite_rejects_nan_and_plus_inf(bad):
    with pytest.raises(ValueError, match="logits contains NaN or \\+inf"):
        check_finite(torch.tensor([0.0, bad, -math.inf]), "logits")


def test_check_logits_names_the_argument():
    check_logits(torch.zeros(2, 3, 5), 5, "teacher logits")
    with pytest.raises(ValueError, match="teacher logits has 4 classes.*vocab_size=5"):
        check_logits(torch.zeros(2, 3, 4), 5, "teacher logits")
    with pytest.raises(ValueError, match="teacher logits contains NaN"):
        check_logits(torch.full((2, 3, 5), math.nan), 5, "teacher logits")


# ------------------------------------------------------------------------- check_vocab_size


def test_check_vocab_size_accepts_integers_from_two():
    check_vocab_size(2)
    check_vocab_size(50257)


@pytest.mark.parametrize("bad", [1, 0, -3, True, 8.0, "8", None])
def test_check_vocab_size_rejects(bad):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 2"):
        check_vocab_size(bad)
    with pytest.raises(ValueError, match=r"model_vocab_size must be an integer >= 2"):
        check_vocab_size(bad, "model_vocab_size")


# ------------------------------------------------------------------------------ check_count


@pytest.mark.parametrize("value", [1, 7, torch.tensor(7), np.int64(7)])
def test_check_count_returns_a_plain_int(value):
    out = check_count(value, "steps")
    assert type(out) is int and out == int(value)


def test_check_count_minimum():
    assert check_count(0, "step", minimum=0) == 0
    with pytest.raises(ValueError, match=r"step must be an integer >= 0, got -1"):
        check_count(-1, "step", minimum=0)


@pytest.mark.parametrize("bad", [0, -2, True, False, 3.0, 2.5, "3", None, torch.tensor(2.0)])
def test_check_count_rejects(bad):
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1"):
        check_count(bad, "steps")


# --------------------------------------------------------------------------------- as_float


@pytest.mark.parametrize(
    "value, expected",
    [(3, 3.0), (0.25, 0.25), (torch.tensor(0.5), 0.5), (torch.tensor([2]), 2.0),
     (Fraction(1, 4), 0.25)],
)  # fmt: skip
def test_as_float_accepts_numbers_and_one_element_tensors(value, expected):
    out = as_float(value, "top_p")
    assert type(out) is float and out == expected


@pytest.mark.parametrize("bad", [True, None, "abc", [0.5], torch.tensor([0.5, 0.5]),
                                 torch.tensor(True)])  # fmt: skip
def test_as_float_rejects(bad):
    with pytest.raises(ValueError, match=r"top_p must be a number"):
        as_float(bad, "top_p")


# -------------------------------------------------------------------------------- reject_if


def test_reject_if_raises_only_when_some_element_is_set():
    reject_if(torch.zeros(3, dtype=torch.bool), "never")
    with pytest.raises(ValueError, match="^alpha_t is negative$"):
        reject_if(torch.tensor([False, True]), "alpha_t is negative")


def test_reject_if_builds_a_lazy_message_only_on_failure():
    calls = []

    def message() -> str:
        calls.append(1)
        return "sigma is bad"

    reject_if(torch.zeros(2, dtype=torch.bool), message)
    assert calls == []
    with pytest.raises(ValueError, match="sigma is bad"):
        reject_if(torch.ones(2, dtype=torch.bool), message)
    assert calls == [1]


# -------------------------------------------------------------------------------- unchecked


def test_unchecked_skips_value_checks_but_not_type_checks():
    out_of_range = torch.tensor([[9]])
    assert checks_enabled()
    with unchecked():
        assert not checks_enabled()
        check_tokens(out_of_range, 5, "z_t")
        check_range(2.0, "alpha_t", 0.0, 1.0)
        check_finite(torch.tensor([math.nan]), "logits")
        with pytest.raises(TypeError, match="z_t"):  # a dtype error is not a value check
            check_tokens(out_of_range.float(), 5, "z_t")
    assert checks_enabled()
    with pytest.raises(ValueError, match="z_t"):
        check_tokens(out_of_range, 5, "z_t")


def test_unchecked_restores_after_an_exception_and_nests():
    with pytest.raises(RuntimeError), unchecked():
        raise RuntimeError
    assert checks_enabled()
    with unchecked():
        with unchecked():
            assert not checks_enabled()
        assert not checks_enabled()  # the inner block restores the outer one's state
    assert checks_enabled()


# ------------------------------------------------------------------------------ typechecked


@typechecked
def scaled(
    x: Float[Tensor, "b l"], z: Int[Tensor, "b l"], scale: float = 1.0
) -> Float[Tensor, "b l"]:
    """Scales x."""
    return x * scale + z


@typechecked
def wrong_shape(x: Float[Tensor, "b l"]) -> Float[Tensor, "b l"]:
    return x.sum(-1)


def test_typechecked_passes_matching_shapes_and_keeps_metadata():
    out = scaled(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), 2.0)
    torch.testing.assert_close(out, torch.full((2, 3), 3.0))
    assert scaled.__name__ == "scaled" and scaled.__doc__ == "Scales x."


def test_typechecked_accepts_an_int_where_a_float_is_annotated():
    out = scaled(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long), 2)
    torch.testing.assert_close(out, torch.full((2, 3), 2.0))


def test_typechecked_shape_mismatch_names_the_argument():
    with pytest.raises(TypeError, match="parameter 'z'"):
        scaled(torch.ones(2, 3), torch.ones(2, 4, dtype=torch.long))


def test_typechecked_dtype_mismatch_names_the_argument():
    with pytest.raises(TypeError, match="parameter 'x'"):
        scaled(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))


def test_typechecked_rejects_a_non_number_for_a_float():
    with pytest.raises(TypeError, match="parameter 'scale'"):
        scaled(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), "2")


def test_typechecked_reports_a_wrong_argument_in_one_line():
    with pytest.raises(TypeError) as caught:
        scaled(torch.ones(2, 3), torch.ones(2, 4, dtype=torch.long))
    assert str(caught.value) == (
        "scaled: parameter 'z' must be Int[Tensor, 'b l'] with b=2, l=3 (the sizes the other "
        "arguments fix), got a torch.int64 tensor of shape (2, 4)"
    )
    with pytest.raises(TypeError) as caught:
        pick(torch.ones(2), "cuda")
    assert str(caught.value) == "pick: parameter 'mode' must be one of 'a', 'b', got 'cuda'"


@typechecked
def pick(x: Float[Tensor, " b"], mode: Literal["a", "b"] = "a") -> Float[Tensor, " b"]:
    return x


def test_typechecked_checks_the_return_value():
    with pytest.raises(TypeError, match="return"):
        wrong_shape(torch.ones(2, 3))


# -------------------------------------------------------------------------------------- Bag


def test_bag_is_a_frozen_pair_with_the_sequence_shape():
    ids = torch.zeros(2, 5, 3, dtype=torch.long)
    bag = Bag(ids=ids, weights=torch.full((2, 5, 3), 1 / 3))
    assert bag.shape == (2, 5)
    assert bag.ids is ids
    with pytest.raises(dataclasses.FrozenInstanceError):
        bag.ids = ids  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Bag)] == ["ids", "weights"]


# --------------------------------------------------------------------------------- Denoiser


class TinyDenoiser(nn.Module):
    def __init__(self, vocab_size: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, vocab_size)

    def forward(self, z_t, sigma, **cond):
        return self.embed(z_t)


def test_denoiser_is_a_runtime_checkable_protocol():
    assert getattr(Denoiser, "_is_runtime_protocol", False)
    assert isinstance(lambda z_t, sigma, **cond: z_t, Denoiser)
    assert isinstance(TinyDenoiser(), Denoiser)
    assert not isinstance(3, Denoiser)
    assert not isinstance(torch.zeros(2), Denoiser)


def test_a_module_denoiser_returns_logits_of_the_documented_shape():
    z_t = torch.randint(0, 4, (2, 5))
    logits = TinyDenoiser()(z_t, torch.zeros(2))
    assert logits.shape == (2, 5, 4) and logits.dtype.is_floating_point
