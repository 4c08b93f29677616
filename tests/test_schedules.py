"""Laws that every discrete schedule obeys (one shared suite), and the Gaussian gamma-schedule's.

A discrete schedule (``discdiff.schedules.Schedule``) gives alpha_t = P(a token is still clean):
in [0, 1], decreasing in t, with an exact ``dalpha_dt`` and an ``inverse``. The suite runs on the
four closed-form schedules and on the dual schedule T(alpha_tilde_t) of Duo at a small and a
GPT-2-sized vocabulary. ``GammaSchedule`` is not one of them (it gives the Gaussian
alpha_tilde_t, not alpha_t) and has its own laws below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff import DualSchedule, GaussianArgmaxTransform
from discdiff.schedules import (
    CosineSchedule,
    GammaSchedule,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
    Schedule,
)


@dataclass(frozen=True)
class Case:
    name: str
    schedule: Schedule
    alpha_0: float  # the promised alpha at t = 0
    alpha_1: float  # the promised alpha at t = 1
    tol: float  # how close the endpoints are promised


def dual(k: int, gamma_min: float, gamma_max: float) -> DualSchedule:
    return DualSchedule(GammaSchedule(gamma_min, gamma_max), GaussianArgmaxTransform(k))


CASES = [
    Case("loglinear", LogLinearSchedule(), 1.0, 1e-3, 1e-12),
    Case("cosine", CosineSchedule(), 1.0, 1e-3, 1e-12),
    Case("linear", LinearSchedule(), 1.0, 0.0, 1e-4),
    Case("geometric", GeometricSchedule(), 1.0, 0.0, 1e-3),
    # DCD at a small vocabulary: a wide window so that alpha_1 is small (distill.py docstring).
    Case("dual-K8-dcd", dual(8, -4.0, 5.0), 1.0, 0.017, 1e-3),
    # Duo's OWT curriculum window: alpha in [0.049, 0.945] at K = 50257 (Concepts §4).
    Case("dual-K50257-owt", dual(50257, -3.55, -1.85), 0.945, 0.049, 1e-3),
]
IDS = [c.name for c in CASES]
times = st.floats(0.0, 1.0)


def tensor(t: float, dtype=torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor([t], dtype=dtype, requires_grad=grad)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_satisfies_the_schedule_protocol(case):
    assert isinstance(case.schedule, Schedule)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(t=times)
def test_alpha_is_a_probability(case, t):
    alpha = case.schedule.alpha(tensor(t)).item()
    assert 0.0 <= alpha <= 1.0


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(t1=times, t2=times)
def test_alpha_decreases_in_t(case, t1, t2):
    lo, hi = sorted((t1, t2))
    s = case.schedule
    assert s.alpha(tensor(lo)).item() >= s.alpha(tensor(hi)).item()
    assert s.dalpha_dt(tensor(t1)).item() <= 0.0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_alpha_strictly_decreases_over_the_interval(case):
    alpha = case.schedule.alpha(torch.linspace(0, 1, 65, dtype=torch.float64))
    assert (alpha[1:] < alpha[:-1]).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(t=times)
def test_dalpha_dt_is_the_autograd_derivative(case, t):
    tt = tensor(t, grad=True)
    (grad,) = torch.autograd.grad(case.schedule.alpha(tt).sum(), tt)
    torch.testing.assert_close(case.schedule.dalpha_dt(tt.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(t=st.floats(1e-4, 1 - 1e-4))
def test_dalpha_dt_matches_a_central_difference(case, t):
    # Independent of autograd (the dual schedule's autograd uses its own derivative).
    h = 1e-6
    s = case.schedule
    fd = (s.alpha(tensor(t + h)) - s.alpha(tensor(t - h))) / (2 * h)
    torch.testing.assert_close(s.dalpha_dt(tensor(t)), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@given(t=times)
def test_inverse_recovers_time(case, t):
    s = case.schedule
    tt = tensor(t)
    alpha = s.alpha(tt)
    back = s.inverse(alpha)
    torch.testing.assert_close(s.alpha(back), alpha, rtol=1e-10, atol=1e-14)
    # In t the round trip is as good as the slope allows: alpha is known to rounding only.
    slope = s.dalpha_dt(tt).abs().item()
    assert abs(back.item() - t) <= 1e-7 + 1e-15 / max(slope, 1e-300)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_endpoints(case):
    alpha = case.schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert alpha[0].item() == pytest.approx(case.alpha_0, abs=case.tol)
    assert alpha[1].item() == pytest.approx(case.alpha_1, abs=case.tol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_are_kept(case, dtype):
    s = case.schedule
    t = torch.tensor([[0.1], [0.5], [0.9]], dtype=dtype)
    for out in (s.alpha(t), s.dalpha_dt(t), s.inverse(s.alpha(t))):
        assert out.dtype == dtype and out.shape == t.shape


# ------------------------------------------------------------------------- the gamma schedule
windows = st.tuples(st.floats(-8.0, 0.0), st.floats(0.1, 8.0)).map(lambda w: (w[0], w[0] + w[1]))


@given(t=times, window=windows)
def test_gamma_schedule_is_variance_preserving(t, window):
    s = GammaSchedule(*window)
    tt = tensor(t)
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(s.alpha_tilde(tt).square() + s.sigma_tilde(tt).square(), one)
    # alpha_tilde^2 = sigmoid(-gamma), gamma linear in t between the window's ends.
    gamma = window[0] + t * (window[1] - window[0])
    expected = math.sqrt(1 / (1 + math.exp(gamma)))
    assert s.alpha_tilde(tt).item() == pytest.approx(expected, rel=1e-12)


@given(t=times, window=windows)
def test_gamma_schedule_derivative_is_the_autograd_derivative(t, window):
    s = GammaSchedule(*window)
    tt = tensor(t, grad=True)
    (grad,) = torch.autograd.grad(s.alpha_tilde(tt).sum(), tt)
    torch.testing.assert_close(s.dalpha_tilde_dt(tt.detach()), grad, rtol=1e-10, atol=1e-12)
    assert s.dalpha_tilde_dt(tt.detach()).item() < 0.0  # decreasing: noise grows with t


@given(t=times, window=windows)
def test_gamma_schedule_inverse_recovers_time(t, window):
    s = GammaSchedule(*window)
    tt = tensor(t)
    torch.testing.assert_close(s.inverse(s.alpha_tilde(tt)), tt, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_schedule_keeps_dtype(dtype):
    s = GammaSchedule()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    for out in (s.alpha_tilde(t), s.sigma_tilde(t), s.dalpha_tilde_dt(t), s.gamma(t)):
        assert out.dtype == dtype and out.shape == t.shape


def test_gamma_schedule_rejects_an_empty_window():
    with pytest.raises(ValueError, match="gamma_min"):
        GammaSchedule(-1.0, -2.0)
    with pytest.raises(ValueError, match="gamma_min"):
        GammaSchedule(-1.0, -1.0)
