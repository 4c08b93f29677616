"""discdiff.config: every configurable object round-trips through JSON and behaves the same after.

Round trips are checked on hypothesis-drawn parameters (strict JSON: no NaN or inf), nested
objects included; behaviour on the same generator (the same per-token loss); unknown types and
keys are refused by name; a user's dataclass joins with ``register``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff import (
    AlphaWindow,
    CosineSchedule,
    DCDistiller,
    DualSchedule,
    GammaSchedule,
    GaussianArgmaxTransform,
    GaussianCurriculum,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
    MaskedDiffusion,
    SDTTDistiller,
    UniformDiffusion,
    config,
)
from tests.conftest import ConstantDenoiser


def _json_round_trip(obj, **context):
    text = json.dumps(obj.to_dict(), allow_nan=False)  # strict JSON
    data = json.loads(text)
    assert data["type"] == type(obj).__name__
    back = config.from_dict(data, **context)
    assert type(back) is type(obj)
    assert back.to_dict() == obj.to_dict()
    assert type(obj).from_dict(data, **context).to_dict() == obj.to_dict()
    return back


eps = st.floats(1e-6, 0.5)
sigma_min = st.floats(1e-5, 1.0)
gamma_pairs = st.tuples(st.floats(-12, 12), st.floats(0.01, 10)).map(lambda p: (p[0], p[0] + p[1]))
windows = st.tuples(st.floats(0.01, 0.98), st.floats(0.005, 0.99)).map(
    lambda p: AlphaWindow(p[0] + (1 - p[0]) * p[1] * 0.99, p[0])
)
vocab = st.integers(2, 100_000)


def _schedules():
    return st.one_of(
        eps.map(LogLinearSchedule),
        eps.map(CosineSchedule),
        st.tuples(sigma_min, st.floats(1.5, 40)).map(lambda p: LinearSchedule(*p)),
        st.tuples(sigma_min, st.floats(1.5, 40)).map(lambda p: GeometricSchedule(*p)),
    )


def _curricula():
    return st.builds(
        GaussianCurriculum,
        window=st.one_of(windows, gamma_pairs.map(lambda g: GammaSchedule(*g))),
        tau=st.floats(1e-5, 2.0),
        end_step=st.integers(0, 10**7),
        top_k=st.one_of(st.none(), st.integers(1, 64)),
        tau_end=st.one_of(st.none(), st.floats(1e-5, 2.0)),
    )


@given(_schedules())
def test_schedules_round_trip(schedule):
    assert _json_round_trip(schedule) == schedule


@given(gamma_pairs)
def test_gamma_schedule_round_trips(gamma):
    assert _json_round_trip(GammaSchedule(*gamma)) == GammaSchedule(*gamma)


@given(windows)
def test_alpha_windows_round_trip(window):
    assert _json_round_trip(window) == window


@given(vocab)
def test_transforms_round_trip(k):
    assert _json_round_trip(GaussianArgmaxTransform(k)) == GaussianArgmaxTransform(k)


@given(gamma_pairs, vocab)
def test_dual_schedules_round_trip_nested(gamma, k):
    schedule = DualSchedule(GammaSchedule(*gamma), GaussianArgmaxTransform(k))
    back = _json_round_trip(schedule)
    assert back == schedule
    assert schedule.to_dict()["gamma"] == {"type": "GammaSchedule", "gamma_min": gamma[0],
                                           "gamma_max": gamma[1]}  # fmt: skip


@given(_curricula())
def test_curricula_round_trip(curriculum):
    assert _json_round_trip(curriculum) == curriculum


@given(st.integers(2, 5000), _schedules(), st.one_of(st.none(), _curricula()), eps)
def test_uniform_diffusions_round_trip(k, schedule, curriculum, e):
    d = UniformDiffusion(k, schedule=schedule, curriculum=curriculum, eps=e)
    back = _json_round_trip(d)
    assert back.schedule == schedule and back.curriculum == curriculum and back.eps == e


@given(st.integers(2, 5000), _schedules(), eps, st.booleans())
def test_masked_diffusions_round_trip(k, schedule, e, time_conditioned):
    d = MaskedDiffusion(k, schedule=schedule, eps=e, time_conditioned=time_conditioned)
    back = _json_round_trip(d)
    assert (back.schedule, back.eps, back.time_conditioned) == (schedule, e, time_conditioned)


@given(
    st.integers(2, 5000),
    st.one_of(windows, gamma_pairs.map(lambda g: GammaSchedule(*g))),
    st.integers(8, 1024),
    st.integers(1, 10**5),
    st.integers(1, 3),
    st.sampled_from(["kl_student_teacher", "kl_teacher_student"]),
    st.sampled_from(["student", "ema"]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_dc_distillers_round_trip_without_the_teacher(k, window, steps, per_round, rounds,
                                                      divergence, refresh, dtype):  # fmt: skip
    teacher = ConstantDenoiser(torch.zeros(k))
    d = DCDistiller(teacher, k, window=window, initial_steps=steps, steps_per_round=per_round,
                    n_rounds=rounds, divergence=divergence, refresh_from=refresh,
                    kl_dtype=dtype)  # fmt: skip
    data = d.to_dict()
    assert "teacher" not in data and "round" not in data  # settings only
    back = _json_round_trip(d, teacher=teacher)
    assert back.kl_dtype is dtype and back.window == window


@given(
    st.integers(2, 5000),
    _schedules(),
    st.booleans(),
    st.integers(2, 3),
    st.integers(1, 3),
    st.sampled_from(["kl_student_teacher", "kl_teacher_student"]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_sdtt_distillers_round_trip_without_the_teacher(k, schedule, time_conditioned, m,
                                                        rounds, divergence, dtype):  # fmt: skip
    teacher = ConstantDenoiser(torch.zeros(k + 1))
    d = SDTTDistiller(teacher, k, schedule=schedule, time_conditioned=time_conditioned,
                      teacher_steps=m, initial_steps=64, n_rounds=rounds, divergence=divergence,
                      kl_dtype=dtype)  # fmt: skip
    assert "teacher" not in d.to_dict()
    back = _json_round_trip(d, teacher=teacher)
    assert back.schedule == schedule and back.kl_dtype is dtype


def test_sdtt_distiller_gives_the_same_loss_after_a_round_trip():
    teacher, student = _model(8), ConstantDenoiser(torch.linspace(-1, 1, 8))
    d = SDTTDistiller(teacher, 7, initial_steps=16, steps_per_round=3, n_rounds=2)
    back = config.from_dict(json.loads(json.dumps(d.to_dict())), teacher=teacher)
    x = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    a = d.loss(student, x, 0, generator=torch.Generator().manual_seed(5))
    b = back.loss(student, x, 0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_the_documented_shape_of_a_uniform_diffusion_config():
    d = UniformDiffusion(100, curriculum=GaussianCurriculum(end_step=7))
    data = d.to_dict()
    assert data["type"] == "UniformDiffusion" and data["vocab_size"] == 100
    assert data["schedule"] == {"type": "LogLinearSchedule", "eps": 1e-3}
    assert data["curriculum"]["type"] == "GaussianCurriculum"
    assert data["curriculum"]["window"]["type"] == "AlphaWindow"


# --- the same behaviour after a round trip ------------------------------------------------------


def _model(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return ConstantDenoiser(torch.randn(k))


@pytest.mark.parametrize("curriculum", [None, GaussianCurriculum(end_step=5, top_k=3),
                                        GaussianCurriculum(window=GammaSchedule(-2.0, 0.5))])
def test_uniform_diffusion_gives_the_same_loss_after_a_round_trip(curriculum):
    d = UniformDiffusion(12, schedule=CosineSchedule(0.01), curriculum=curriculum)
    back = config.from_dict(json.loads(json.dumps(d.to_dict())))
    x = torch.randint(0, 12, (3, 7), generator=torch.Generator().manual_seed(1))
    model = _model(12)
    for step in (0, 10):
        a = d.loss(model, x, step=step, generator=torch.Generator().manual_seed(2))
        b = back.loss(model, x, step=step, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
    a = d.nelbo(model, x, generator=torch.Generator().manual_seed(3)).total
    b = back.nelbo(model, x, generator=torch.Generator().manual_seed(3)).total
    assert torch.equal(a, b)


def test_masked_diffusion_gives_the_same_loss_after_a_round_trip():
    d = MaskedDiffusion(9, schedule=LinearSchedule(1e-3, 8.0), time_conditioned=True)
    back = config.from_dict(json.loads(json.dumps(d.to_dict())))
    x = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(1))
    model = _model(10)
    a = d.loss(model, x, generator=torch.Generator().manual_seed(2))
    b = back.loss(model, x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_dc_distiller_gives_the_same_loss_after_a_round_trip():
    teacher, student = _model(11), ConstantDenoiser(torch.linspace(-1, 1, 11))
    d = DCDistiller(teacher, 11, window=AlphaWindow(0.9, 0.2), initial_steps=16,
                    steps_per_round=4, n_rounds=2, kl_dtype=torch.float64)  # fmt: skip
    back = config.from_dict(json.loads(json.dumps(d.to_dict())), teacher=teacher)
    x = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    a = d.loss(student, x, 0, generator=torch.Generator().manual_seed(5))
    b = back.loss(student, x, 0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# --- errors, registry, reprs --------------------------------------------------------------------


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown type 'WarpSchedule'"):
        config.from_dict({"type": "WarpSchedule", "eps": 0.1})
    nested = UniformDiffusion(5).to_dict()
    nested["schedule"] = {"type": "WarpSchedule"}
    with pytest.raises(ValueError, match="WarpSchedule"):
        config.from_dict(nested)
    with pytest.raises(ValueError, match="'type'"):
        config.from_dict({"eps": 0.1})


def test_wrong_types_and_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="CosineSchedule"):
        LogLinearSchedule.from_dict({"type": "CosineSchedule", "eps": 0.1})
    with pytest.raises(ValueError, match="epsilon"):
        LogLinearSchedule.from_dict({"type": "LogLinearSchedule", "epsilon": 0.1})
    with pytest.raises(ValueError, match="unknown keys"):
        config.from_dict({**UniformDiffusion(5).to_dict(), "temperature": 1.0})
    with pytest.raises(TypeError):
        config.from_dict(DCDistiller(_model(5), 5).to_dict())  # the teacher is required


@dataclass(frozen=True)
class StepSchedule:
    """A user's schedule: a dataclass with the three schedule methods."""

    drop: float = 0.5

    def alpha(self, t):
        return 1 - self.drop * t

    def dalpha_dt(self, t):
        return torch.full_like(t, -self.drop)

    def inverse(self, alpha):
        return (1 - alpha) / self.drop


def test_a_registered_user_schedule_round_trips_inside_a_diffusion():
    d = UniformDiffusion(7, schedule=StepSchedule(0.9))
    with pytest.raises(ValueError, match="StepSchedule"):
        config.from_dict(json.loads(json.dumps(d.to_dict())))
    config.register(StepSchedule)
    back = config.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back.schedule == StepSchedule(0.9)
    assert "StepSchedule" in config.known_types()


def test_an_unserialisable_schedule_is_named():
    class Opaque:
        def alpha(self, t):
            return 1 - t

        def dalpha_dt(self, t):
            return -torch.ones_like(t)

        def inverse(self, a):
            return 1 - a

    with pytest.raises(TypeError, match="Opaque"):
        UniformDiffusion(5, schedule=Opaque()).to_dict()


def test_reprs_are_readable():
    d = UniformDiffusion(50, schedule=CosineSchedule(0.01), curriculum=GaussianCurriculum(tau=0.5))
    text = repr(d)
    assert text.startswith("UniformDiffusion(vocab_size=50") and "CosineSchedule(eps=0.01)" in text
    assert "tau=0.5" in text
    assert repr(MaskedDiffusion(5)).startswith("MaskedDiffusion(vocab_size=5")
    dual = DualSchedule(GammaSchedule(-1.0, 1.0), GaussianArgmaxTransform(9))
    assert repr(dual) == ("DualSchedule(gamma=GammaSchedule(gamma_min=-1.0, gamma_max=1.0), "
                          "transform=GaussianArgmaxTransform(vocab_size=9))")  # fmt: skip
    distiller = repr(DCDistiller(_model(6), 6, n_rounds=2))
    assert distiller.startswith("DCDistiller(vocab_size=6, window=AlphaWindow(")
    assert "kl_dtype=torch.float32" in distiller and "round=0" in distiller
