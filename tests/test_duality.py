"""The duality transform T (Concepts §2) checked three independent ways, plus its contract.

1. K = 2 closed form T = 2 Phi(nu / sqrt 2) - 1.
2. Concepts §2's integral by scipy's adaptive quadrature (the library integrates another form).
3. Monte-Carlo argmax frequencies of the Gaussian latent, within binomial bounds.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff.duality import DualSchedule, GaussianArgmaxTransform, _build_table
from discdiff.schedules import GammaSchedule, Schedule

F64 = torch.float64
VOCABS = st.sampled_from([2, 3, 27, 1000, 50257, 262144]) | st.integers(2, 262144)


def _nu(alpha_tilde: torch.Tensor) -> torch.Tensor:
    return alpha_tilde / torch.sqrt(1 - alpha_tilde**2)


def _quad_reference(vocab_size: int, alpha_tilde: float) -> tuple[float, float]:
    """(T, dT/d alpha_tilde) from Concepts §2 as written, by scipy.integrate.quad in log-space."""
    from scipy import integrate, special

    m = vocab_size - 1
    nu = alpha_tilde / math.sqrt(1 - alpha_tilde**2)

    def integral(moment: int) -> float:
        def f(z: float) -> float:
            log_v = -0.5 * (z - nu) ** 2 - 0.5 * math.log(2 * math.pi) + m * special.log_ndtr(z)
            return (z - nu) ** moment * math.exp(log_v)

        step = float(special.ndtri(math.exp(-math.log(2) / m))) if m > 1 else 0.0
        pts = sorted({p for p in (nu, step - 1, step, step + 1) if nu - 12 < p < nu + 12})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", integrate.IntegrationWarning)  # roundoff at 1e-14
            value, _ = integrate.quad(f, nu - 12, nu + 12, points=pts, epsabs=1e-14,
                                      epsrel=1e-12, limit=500)
        return value

    k = vocab_size
    value = (k * integral(0) - 1) / (k - 1)
    slope = k / (k - 1) * integral(1) * (1 - alpha_tilde**2) ** -1.5
    return value, slope


# --- three independent checks of the values -------------------------------------------------


def test_k2_closed_form() -> None:
    transform = GaussianArgmaxTransform(vocab_size=2)
    a = torch.linspace(0, 1, 20001, dtype=F64)
    nu = _nu(a)
    expected = 2 * torch.special.ndtr(nu / math.sqrt(2)) - 1
    torch.testing.assert_close(transform(a), expected, atol=1e-12, rtol=0)
    # d/d alpha_tilde [2 Phi(nu / sqrt 2) - 1] = sqrt(2) phi(nu / sqrt 2) (1 - alpha_tilde^2)^-3/2
    inner = a[:-1]
    slope = math.sqrt(2) * torch.exp(-nu[:-1] ** 2 / 4) / math.sqrt(2 * math.pi)
    slope = slope * (1 - inner**2) ** -1.5
    scale = float(slope.max())
    torch.testing.assert_close(transform.derivative(inner), slope, atol=1e-10 * scale, rtol=0)


@pytest.mark.parametrize("vocab_size", [3, 27, 1000, 50257, 262144])
def test_matches_adaptive_quadrature(vocab_size: int) -> None:
    transform = GaussianArgmaxTransform(vocab_size=vocab_size)
    points = [0.0, 0.13, 0.5, 0.8, 0.93, 0.97, 0.99, 0.997]
    ref = torch.tensor([_quad_reference(vocab_size, p) for p in points], dtype=F64)
    a = torch.tensor(points, dtype=F64)
    torch.testing.assert_close(transform(a), ref[:, 0], atol=1e-10, rtol=0)
    scale = float(transform.derivative(torch.linspace(0, 1, 10001, dtype=F64)).max())
    torch.testing.assert_close(transform.derivative(a), ref[:, 1], atol=1e-8 * scale, rtol=0)


@pytest.mark.parametrize("vocab_size", [5, 50])
@pytest.mark.parametrize("alpha_tilde", [0.05, 0.3, 0.6, 0.85])
def test_monte_carlo_argmax_frequency(vocab_size: int, alpha_tilde: float, generator) -> None:
    """P(argmax w = x) = alpha + (1 - alpha) / K for w = alpha_tilde e_x + sigma_tilde eps."""
    n = 100_000
    x = torch.randint(vocab_size, (n,), generator=generator)
    eps = torch.randn(n, vocab_size, generator=generator, dtype=F64)
    signal = torch.nn.functional.one_hot(x, vocab_size)
    w = alpha_tilde * signal + math.sqrt(1 - alpha_tilde**2) * eps
    freq = (w.argmax(-1) == x).double().mean().item()
    alpha = GaussianArgmaxTransform(vocab_size)(torch.tensor(alpha_tilde, dtype=F64)).item()
    p = alpha + (1 - alpha) / vocab_size
    assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / n)


# --- laws ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [2, 27, 50257, 262144])
def test_endpoints_and_monotone(vocab_size: int) -> None:
    transform = GaussianArgmaxTransform(vocab_size)
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    assert transform(ends).tolist() == [0.0, 1.0]
    slope = transform.derivative(ends)
    assert slope[0].item() > 0 and slope[1].item() == 0.0
    dense = torch.linspace(0, 1, 200_001, dtype=F64)
    # Near 1: where nu crosses the table's end and 1 - alpha_tilde reaches rounding.
    tail = 1 - torch.logspace(-1, -16, 20001, dtype=F64)
    # Around grid cells nu = i / 16, where two Hermite pieces meet.
    nu = (torch.arange(1, 256, dtype=F64)[:, None] / 16 + torch.linspace(-1e-9, 1e-9, 21,
                                                                          dtype=F64)).flatten()
    for a in (dense, tail, nu / torch.sqrt(1 + nu**2)):
        value, slope = transform(a), transform.derivative(a)
        assert torch.isfinite(value).all() and torch.isfinite(slope).all()
        assert (value.diff() >= 0).all() and (slope >= 0).all()
        assert ((value >= 0) & (value <= 1)).all()
    assert transform.derivative(tail)[-1].item() == 0.0


@given(vocab_size=VOCABS, alpha_tilde=st.floats(0.0, 0.999))
def test_derivative_matches_autograd_and_finite_difference(vocab_size: int,
                                                           alpha_tilde: float) -> None:
    transform = GaussianArgmaxTransform(vocab_size)
    a = torch.tensor([alpha_tilde], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(transform(a).sum(), a)
    slope = transform.derivative(a.detach())
    torch.testing.assert_close(grad, slope, rtol=1e-14, atol=0)
    h = 1e-6
    lo, hi = max(alpha_tilde - h, 0.0), alpha_tilde + h
    fd = (transform(torch.tensor([hi], dtype=F64)) - transform(torch.tensor([lo], dtype=F64)))
    torch.testing.assert_close(fd / (hi - lo), slope, rtol=1e-5, atol=1e-9)


@given(vocab_size=VOCABS, alpha=st.floats(0.0, 1.0))
def test_inverse_round_trip(vocab_size: int, alpha: float) -> None:
    transform = GaussianArgmaxTransform(vocab_size)
    a = torch.tensor([alpha], dtype=F64)
    torch.testing.assert_close(transform(transform.inverse(a)), a, atol=1e-12, rtol=0)


@given(vocab_size=VOCABS, alpha_tilde=st.floats(0.0, 0.95))
def test_inverse_recovers_alpha_tilde(vocab_size: int, alpha_tilde: float) -> None:
    transform = GaussianArgmaxTransform(vocab_size)
    a = torch.tensor([alpha_tilde], dtype=F64)
    # Conditioning: an error of ~1e-16 in T moves alpha_tilde by ~1e-16 / T'.
    tol = 1e-14 / transform.derivative(a).item() + 1e-12
    torch.testing.assert_close(transform.inverse(transform(a)), a, atol=tol, rtol=0)


def test_inverse_endpoints() -> None:
    transform = GaussianArgmaxTransform(50257)
    assert transform.inverse(torch.tensor([0.0, 1.0], dtype=F64)).tolist() == [0.0, 1.0]


# --- contract: dtypes, shapes, caching, errors -----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4)])
def test_dtype_and_shape_preserved(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    transform = GaussianArgmaxTransform(1000)
    a = torch.rand(shape, dtype=dtype, requires_grad=True)
    value = transform(a)
    assert value.dtype == dtype and value.shape == a.shape
    value.sum().backward()
    assert a.grad is not None and a.grad.dtype == dtype
    for out in (transform.derivative(a.detach()), transform.inverse(value.detach())):
        assert out.dtype == dtype and out.shape == a.shape
    torch.testing.assert_close(transform(a.detach().double()).to(dtype), value.detach())


def test_cached_per_vocabulary() -> None:
    first, second = GaussianArgmaxTransform(30522), GaussianArgmaxTransform(30522)
    cpu = torch.device("cpu")
    assert first._table(cpu)[0] is second._table(cpu)[0]
    assert first == second and hash(first) == hash(second) and first != GaussianArgmaxTransform(2)
    assert _build_table.cache_info().hits >= 1
    assert "30522" in repr(first)


@pytest.mark.parametrize("bad", [1, 0, -5, True])
def test_bad_vocab_size(bad) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        GaussianArgmaxTransform(bad)


@pytest.mark.parametrize("bad", [2.5, "3"])
def test_non_integer_vocab_size(bad) -> None:
    # ValueError from the value check; TypeError first when jaxtyping's pytest hook is on.
    with pytest.raises((ValueError, TypeError), match="vocab_size"):
        GaussianArgmaxTransform(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0 + 1e-9, float("nan"), float("inf")])
def test_bad_alpha_tilde_and_alpha(bad: float) -> None:
    transform = GaussianArgmaxTransform(27)
    a = torch.tensor([0.5, bad], dtype=F64)
    with pytest.raises(ValueError, match="alpha_tilde"):
        transform(a)
    with pytest.raises(ValueError, match="alpha_tilde"):
        transform.derivative(a)
    with pytest.raises(ValueError, match="alpha"):
        transform.inverse(a)


def test_integer_input_rejected() -> None:
    with pytest.raises(Exception, match="alpha_tilde"):
        GaussianArgmaxTransform(27)(torch.tensor([0, 1]))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_and_float32_match_float64(device: str) -> None:
    transform = GaussianArgmaxTransform(50257)
    a = torch.rand(1000, dtype=torch.float64)
    out = transform(a.float().to(device))
    assert out.device.type == device and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu().double(), transform(a.float().double()))
    torch.testing.assert_close(
        transform.derivative(a.float().to(device)).cpu().double(),
        transform.derivative(a.float().double()),
        rtol=1e-5,
        atol=1e-6,
    )


# --- DualSchedule ----------------------------------------------------------------------------


@given(t=st.floats(0.0, 1.0), g0=st.floats(-8.0, 2.0), width=st.floats(0.1, 8.0),
       vocab_size=VOCABS)
def test_dual_schedule_exact_chain_rule(t: float, g0: float, width: float,
                                        vocab_size: int) -> None:
    schedule = DualSchedule(GammaSchedule(g0, g0 + width), GaussianArgmaxTransform(vocab_size))
    tt = torch.tensor([t], dtype=F64, requires_grad=True)
    alpha = schedule.alpha(tt)
    (grad,) = torch.autograd.grad(alpha.sum(), tt)
    torch.testing.assert_close(schedule.dalpha_dt(tt.detach()), grad, rtol=1e-12, atol=1e-15)
    assert schedule.dalpha_dt(tt.detach()).item() <= 0


@given(t=st.floats(0.0, 1.0), vocab_size=VOCABS)
def test_dual_schedule_inverse(t: float, vocab_size: int) -> None:
    schedule = DualSchedule(GammaSchedule(), GaussianArgmaxTransform(vocab_size))
    tt = torch.tensor([t], dtype=F64)
    torch.testing.assert_close(schedule.inverse(schedule.alpha(tt)), tt, atol=1e-7, rtol=0)


def test_dual_schedule_contract() -> None:
    gamma = GammaSchedule()
    schedule = DualSchedule(gamma, GaussianArgmaxTransform(50257))
    assert isinstance(schedule, Schedule)
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(schedule.alpha_tilde(t), gamma.alpha_tilde(t))
    torch.testing.assert_close(schedule.sigma_tilde(t), gamma.sigma_tilde(t))
    torch.testing.assert_close(schedule.dalpha_tilde_dt(t), gamma.dalpha_tilde_dt(t))
    alpha = schedule.alpha(t)
    assert (alpha.diff() < 0).all()
    # Concepts §4: the OWT window gives alpha in [0.049, 0.945] at K = 50257.
    assert abs(alpha[0].item() - 0.945) < 5e-3 and abs(alpha[-1].item() - 0.049) < 5e-3
    with pytest.raises(ValueError, match="alpha"):
        schedule.inverse(torch.tensor([1.5]))
