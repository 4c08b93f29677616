import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff.schedules import (
    CosineSchedule,
    GammaSchedule,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
)

SCHEDULES = [LogLinearSchedule(), CosineSchedule(), LinearSchedule(), GeometricSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@given(t=st.floats(0.0, 1.0))
def test_alpha_is_a_decreasing_probability_with_exact_derivative(schedule, t):
    tt = torch.tensor([t], dtype=torch.float64, requires_grad=True)
    alpha = schedule.alpha(tt)
    assert 0.0 <= alpha.item() <= 1.0
    (grad,) = torch.autograd.grad(alpha.sum(), tt)
    torch.testing.assert_close(schedule.dalpha_dt(tt.detach()), grad, rtol=1e-10, atol=1e-12)
    assert schedule.dalpha_dt(tt.detach()).item() <= 0.0


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@given(t=st.floats(0.0, 1.0))
def test_inverse_recovers_time(schedule, t):
    tt = torch.tensor([t], dtype=torch.float64)
    torch.testing.assert_close(schedule.inverse(schedule.alpha(tt)), tt, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_endpoints(schedule):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    alpha = schedule.alpha(t)
    assert alpha[0].item() == pytest.approx(1.0, abs=1e-3)
    assert alpha[1].item() < 1e-2


@given(t=st.floats(0.0, 1.0), g0=st.floats(-8, 0), width=st.floats(0.1, 8))
def test_gamma_schedule_is_variance_preserving_with_exact_derivative(t, g0, width):
    s = GammaSchedule(g0, g0 + width)
    tt = torch.tensor([t], dtype=torch.float64, requires_grad=True)
    a = s.alpha_tilde(tt)
    torch.testing.assert_close(
        a.square() + s.sigma_tilde(tt.detach()).square(), torch.ones(1, dtype=torch.float64)
    )
    (grad,) = torch.autograd.grad(a.sum(), tt)
    torch.testing.assert_close(s.dalpha_tilde_dt(tt.detach()), grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.inverse(a.detach()), tt.detach(), rtol=1e-8, atol=1e-8)


def test_gamma_schedule_rejects_an_empty_window():
    with pytest.raises(ValueError, match="gamma_min"):
        GammaSchedule(-1.0, -2.0)
