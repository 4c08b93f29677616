"""Laws of the losses (Concepts §3): the uniform NELBO against the reference formula (written
straight down), its gradient, its continuous-time limit and the full bound on an exactly solvable
case; the masked NELBO against its reference, AR loss, bound terms and the argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff.losses import (
    ar_loss,
    masked_nelbo,
    masked_prior_kl,
    masked_reconstruction,
    uniform_nelbo,
    uniform_prior_kl,
    uniform_reconstruction,
)
from discdiff.losses.reference import masked_nelbo_reference, uniform_nelbo_reference
from discdiff.schedules import LogLinearSchedule
from discdiff.typing import unchecked

F64 = torch.float64


def mp_uniform_nelbo(logits, x_0, z_t, alpha, dalpha):
    """The same formula in 50-digit arithmetic (mpmath), for the ill-conditioned corners."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    b, length, k = logits.shape
    al = torch.as_tensor(alpha, dtype=F64).expand(b, length)
    dal = torch.as_tensor(dalpha, dtype=F64).expand(b, length)
    out = torch.empty(b, length, dtype=F64)
    for r in range(b):
        for c in range(length):
            lg = [mp.mpf(float(v)) for v in logits[r, c].tolist()]
            top = max(lg)
            e = [mp.e ** (v - top) for v in lg]
            p = [v / sum(e) for v in e]
            a, da = mp.mpf(float(al[r, c])), mp.mpf(float(dal[r, c]))
            x, i = int(x_0[r, c]), int(z_t[r, c])
            xb = [k * a * (j == x) + (1 - a) for j in range(k)]
            xt = [k * a * p[j] + (1 - a) for j in range(k)]
            s = k / xb[i] - k / xt[i]
            for j in range(k):
                if j != i:
                    s -= xb[j] / xb[i] * mp.log(xt[i] * xb[j] / (xt[j] * xb[i]))
            out[r, c] = float(da / (k * a) * s)
    return out


def make_case(seed, b, length, k, alpha, scale=2.0, dtype=F64, per_token_alpha=False):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(b, length, k, generator=g, dtype=F64)).to(dtype)
    x_0 = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(
        torch.rand(b, length, generator=g) < 0.5, x_0, torch.randint(0, k, (b, length), generator=g)
    )
    shape = (b, length) if per_token_alpha else (b, 1)
    a = torch.full(shape, alpha, dtype=dtype)
    da = -(0.1 + torch.rand(shape, generator=g, dtype=F64)).to(dtype)
    return logits, x_0, z_t, a, da


cases = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 3),  # B
    st.integers(1, 4),  # L
    st.integers(2, 12),  # K
)


# --- uniform NELBO: values --------------------------------------------------------------------


@given(case=cases, alpha=st.floats(0.01, 0.999), scale=st.floats(0.1, 3.0), per_token=st.booleans())
def test_uniform_nelbo_equals_the_reference_in_float64(case, alpha, scale, per_token):
    logits, x_0, z_t, a, da = make_case(*case, alpha, scale, per_token_alpha=per_token)
    ref = uniform_nelbo_reference(logits, x_0, z_t, a, da)
    out = uniform_nelbo(logits, x_0, z_t, a, da)
    assert out.dtype == F64 and out.shape == x_0.shape
    # The reference itself loses digits when the loss is tiny (x̂ near one-hot): atol covers it.
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()) + 1e-14)


@given(case=cases, alpha=st.floats(1e-3, 0.999), scale=st.floats(0.1, 3.0))
def test_float32_matches_float64_on_the_same_inputs(case, alpha, scale):
    logits, x_0, z_t, a, da = make_case(*case, alpha, scale, dtype=torch.float32)
    out32 = uniform_nelbo(logits, x_0, z_t, a, da)
    ref = uniform_nelbo(logits.double(), x_0, z_t, a.double(), da.double())
    assert out32.dtype == torch.float32
    # Relative 1e-5; near-one-hot x̂ gives losses O((1 - p)²) whose absolute error stays tiny.
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-7 * float(ref.abs().max()))


@pytest.mark.parametrize("alpha", [1e-7, 1e-4, 1e-2, 0.3, 0.9999])
@pytest.mark.parametrize("k", [2, 3, 9])
def test_accuracy_against_high_precision_including_tiny_alpha(alpha, k):
    """α -> 0: the prefactor α'/(Kα) blows up while the bracket is O(α²); α -> 1: β -> ∞."""
    logits, x_0, z_t, a, da = make_case(k, 2, 4, k, alpha, scale=1.5)
    logits = logits.float().double()  # exactly representable in float32 too
    a = a.float().double()
    exact = mp_uniform_nelbo(logits, x_0, z_t, a, da)
    torch.testing.assert_close(uniform_nelbo(logits, x_0, z_t, a, da), exact, rtol=1e-11, atol=0)
    out32 = uniform_nelbo(logits.float(), x_0, z_t, a.float(), da.float())
    torch.testing.assert_close(out32.double(), exact, rtol=1e-5, atol=0)
    assert torch.isfinite(out32).all()


@given(
    case=cases, alpha=st.floats(1e-6, 1.0), scale=st.floats(0.1, 30.0), n_masked=st.integers(0, 5)
)
def test_uniform_nelbo_is_nonnegative_and_finite(case, alpha, scale, n_masked):
    logits, x_0, z_t, a, da = make_case(*case, alpha, scale)
    if float(torch.tensor(alpha, dtype=torch.float32)) == 1.0:
        z_t = x_0.clone()
    # -inf logits anywhere except at x_0 and z_t keep the loss finite.
    g = torch.Generator().manual_seed(case[0])
    ban = torch.randint(0, logits.shape[-1], (*x_0.shape, n_masked), generator=g)
    logits = logits.scatter(-1, ban, -math.inf)
    logits = logits.scatter(-1, x_0.unsqueeze(-1), 0.0).scatter(-1, z_t.unsqueeze(-1), 0.0)
    for dtype in (F64, torch.float32):
        out = uniform_nelbo(logits.to(dtype), x_0, z_t, a.to(dtype), da.to(dtype))
        assert torch.isfinite(out).all() and (out >= 0).all()


@given(case=cases, alpha=st.floats(1e-6, 1.0), exact=st.booleans())
def test_uniform_nelbo_is_zero_at_the_one_hot_of_x0(case, alpha, exact):
    seed, b, length, k = case
    logits, x_0, z_t, a, da = make_case(seed, b, length, k, alpha)
    if float(torch.tensor(alpha, dtype=torch.float32)) == 1.0:
        z_t = x_0.clone()
    fill = -math.inf if exact else -1e4  # -1e4: exp underflows to exactly 0 in both dtypes
    one_hot = torch.full((b, length, k), fill, dtype=F64).scatter(-1, x_0.unsqueeze(-1), 0.0)
    for dtype in (F64, torch.float32):
        leaf = one_hot.to(dtype).clone().requires_grad_()
        out = uniform_nelbo(leaf, x_0, z_t, a.to(dtype), da.to(dtype))
        assert (out == 0).all()
        out.sum().backward()
        assert torch.isfinite(leaf.grad).all() and (leaf.grad.abs() < 1e-6).all()


def test_alpha_one_gives_the_limit_and_rejects_impossible_tokens():
    logits, x_0, _, _, _ = make_case(0, 2, 3, 5, 0.5)
    a, da = torch.ones(2, 1, dtype=F64), -torch.ones(2, 1, dtype=F64)
    p_x = logits.softmax(-1).gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
    # α = 1: x̄_j = 0 for j != x, the bracket is 1 - 1/p_x.
    torch.testing.assert_close(uniform_nelbo(logits, x_0, x_0, a, da), (1 / p_x - 1) / 5)
    z_t = (x_0 + 1) % 5
    with pytest.raises(ValueError, match="alpha_t = 1"):
        uniform_nelbo(logits, x_0, z_t, a, da)
    with unchecked():
        assert torch.isposinf(uniform_nelbo(logits, x_0, z_t, a, da)).all()


def test_alpha_and_dalpha_broadcast_as_floats_scalars_and_columns():
    logits, x_0, z_t, _, _ = make_case(1, 2, 3, 6, 0.5)
    ref = uniform_nelbo(
        logits, x_0, z_t, torch.full((2, 3), 0.4, dtype=F64), torch.full((2, 3), -0.9, dtype=F64)
    )
    for a, da in [
        (0.4, -0.9),
        (torch.tensor(0.4, dtype=F64), torch.tensor(-0.9, dtype=F64)),
        (torch.full((2, 1), 0.4, dtype=F64), -0.9),
    ]:
        torch.testing.assert_close(uniform_nelbo(logits, x_0, z_t, a, da), ref)


def test_chunking_layout_and_dtypes_do_not_change_the_result():
    logits, x_0, z_t, a, da = make_case(2, 3, 5, 7, 0.3)
    ref = uniform_nelbo(logits, x_0, z_t, a, da)
    for rows in (1, 2, 4, 100):
        torch.testing.assert_close(uniform_nelbo(logits, x_0, z_t, a, da, chunk_rows=rows), ref)
    # A transposed (non-viewable) and an expanded (stride-0) input.
    t = logits.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(uniform_nelbo(t, x_0, z_t, a, da, chunk_rows=2), ref)
    row = logits[:1, :1].expand(3, 5, 7)
    torch.testing.assert_close(
        uniform_nelbo(row, x_0, z_t, a, da), uniform_nelbo_reference(row, x_0, z_t, a, da)
    )
    half = uniform_nelbo(logits.bfloat16(), x_0, z_t, a.float(), da.float())
    assert half.dtype == torch.float32


def test_double_backward_is_refused_not_wrong():
    logits, x_0, z_t, a, da = make_case(4, 1, 2, 4, 0.4)
    leaf = logits.requires_grad_()
    (g,) = torch.autograd.grad(uniform_nelbo(leaf, x_0, z_t, a, -1).sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_logits_are_not_modified():
    logits, x_0, z_t, a, da = make_case(3, 2, 4, 6, 0.2)
    before = logits.clone()
    uniform_nelbo(logits.requires_grad_(), x_0, z_t, a, da).sum().backward()
    assert torch.equal(logits.detach(), before)


# --- uniform NELBO: gradient -----------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-3, 0.04, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_gradcheck_float64(alpha, k):
    logits, x_0, z_t, a, da = make_case(10 + k, 2, 3, k, alpha)
    if alpha == 1.0:
        z_t = x_0
    leaf = logits.requires_grad_()
    dleaf = da.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda lg, d: uniform_nelbo(lg, x_0, z_t, a, d, chunk_rows=2), (leaf, dleaf)
    )


@given(case=cases, alpha=st.floats(1e-4, 0.9999), scale=st.floats(0.1, 4.0))
@settings(max_examples=20)
def test_gradient_equals_autograd_of_the_reference(case, alpha, scale):
    logits, x_0, z_t, a, da = make_case(*case, alpha, scale)
    w = torch.randn(x_0.shape, dtype=F64, generator=torch.Generator().manual_seed(case[0]))
    leaf = logits.requires_grad_()
    (g_lean,) = torch.autograd.grad((uniform_nelbo(leaf, x_0, z_t, a, da) * w).sum(), leaf)
    (g_ref,) = torch.autograd.grad((uniform_nelbo_reference(leaf, x_0, z_t, a, da) * w).sum(), leaf)
    torch.testing.assert_close(g_lean, g_ref, rtol=1e-8, atol=1e-11 * float(g_ref.abs().max()))
    leaf32 = logits.detach().float().requires_grad_()
    out32 = uniform_nelbo(leaf32, x_0, z_t, a.float(), da.float())
    (g32,) = torch.autograd.grad((out32 * w.float()).sum(), leaf32)
    assert g32.dtype == torch.float32 and torch.isfinite(g32).all()


def test_float32_gradient_matches_float64():
    logits, x_0, z_t, a, da = make_case(5, 2, 8, 40, 0.3, dtype=torch.float32)
    grads = []
    for dtype in (torch.float32, F64):
        leaf = logits.to(dtype).clone().requires_grad_()
        uniform_nelbo(leaf, x_0, z_t, a.to(dtype), da.to(dtype)).sum().backward()
        grads.append(leaf.grad.double())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5 * float(grads[1].abs().max()))


# --- continuous time as the limit of discrete time; the full bound ---------------------------

SCHEDULE = LogLinearSchedule(eps=1e-3)


def _time_nodes(t0: float, t1: float, order: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre on panels graded geometrically towards t0 (the integrand has a log
    singularity at α = 1); the piece below t0 + 1e-12 (t0 = 0) is O(1e-11) and dropped."""
    edges = [t0 + (t1 - t0) * 10.0**-e for e in range(12, 0, -1)] + [t1]
    x, w = np.polynomial.legendre.leggauss(order)
    nodes, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        nodes.append((hi - lo) / 2 * x + (hi + lo) / 2)
        weights.append((hi - lo) / 2 * w)
    return torch.tensor(np.concatenate(nodes)), torch.tensor(np.concatenate(weights))


def _marginal(alpha, probs):
    """q(z_t | x̂) = α x̂ + (1 - α)/K for a batch of α (n,) and x̂ (K,) or (n, K)."""
    return alpha[:, None] * probs + (1 - alpha[:, None]) / probs.shape[-1]


def _diffusion_integral(x_hat_of, k: int, x: int, t0: float, t1: float) -> float:
    """∫_{t0}^{t1} Σ_i q_t(i | x) uniform_nelbo(x̂(i, α_t), x, i) dt by quadrature."""
    t, w = _time_nodes(t0, t1)
    alpha, dalpha = SCHEDULE.alpha(t), SCHEDULE.dalpha_dt(t)
    q_t = _marginal(alpha, F.one_hot(torch.tensor(x), k).to(F64))  # (n, K) over z_t = i
    i = torch.arange(k).repeat(len(t))
    a_rows = alpha.repeat_interleave(k)
    logits = x_hat_of(i, a_rows).log().unsqueeze(1)
    loss = uniform_nelbo(
        logits,
        torch.full((len(i), 1), x),
        i[:, None],
        a_rows[:, None],
        dalpha.repeat_interleave(k)[:, None],
    )
    return float((w * (q_t * loss.view(len(t), k)).sum(-1)).sum())


def _discrete_sum(x_hat: torch.Tensor, x: int, steps: int) -> float:
    """Σ_steps E_{q(z_t|x)} KL(q(z_s | z_t, x) ‖ p_θ(z_s | z_t)) with explicit K x K matrices:
    p_θ(z_s | z_t) = q(z_t | z_s) q(z_s | x̂) / q(z_t | x̂), the Bayes posterior with x̂ for x."""
    k = x_hat.shape[-1]
    alpha = SCHEDULE.alpha(torch.linspace(0, 1, steps + 1, dtype=F64))
    a_s, a_t = alpha[:-1], alpha[1:]
    a_ts = a_t / a_s
    trans = a_ts[:, None, None] * torch.eye(k, dtype=F64) + (1 - a_ts[:, None, None]) / k
    x_vec = F.one_hot(torch.tensor(x), k).to(F64)
    post = trans * _marginal(a_s, x_vec)[:, None, :] / _marginal(a_t, x_vec)[:, :, None]
    model = trans * _marginal(a_s, x_hat)[:, None, :] / _marginal(a_t, x_hat)[:, :, None]
    kl = (torch.special.xlogy(post, post) - torch.special.xlogy(post, model)).sum(-1)
    return float((_marginal(a_t, x_vec) * kl).sum())


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 5))
@settings(max_examples=8)
def test_continuous_nelbo_is_the_limit_of_the_discrete_sum(seed, k):
    g = torch.Generator().manual_seed(seed)
    x_hat = torch.rand(k, generator=g, dtype=F64) + 0.05
    x_hat /= x_hat.sum()
    x = int(torch.randint(0, k, (), generator=g))
    continuous = _diffusion_integral(lambda i, a: x_hat.expand(len(i), k), k, x, 0.0, 1.0)
    discrete = _discrete_sum(x_hat, x, 10_000)
    assert discrete == pytest.approx(continuous, rel=1e-8)
    # For a constant x̂ both telescope: -log x̂[x] - KL(q(z_1 | x) ‖ q(z_1 | x̂)).
    a1 = SCHEDULE.alpha(torch.ones(1, dtype=F64))
    q1x = _marginal(a1, F.one_hot(torch.tensor(x), k).to(F64))[0]
    q1m = _marginal(a1, x_hat)[0]
    closed = float(-x_hat[x].log() - (q1x * (q1x / q1m).log()).sum())
    assert continuous == pytest.approx(closed, rel=1e-8)


P_DATA = torch.tensor([0.6, 0.3, 0.1], dtype=F64)


def _uniform_bound(x_hat_of, eps: float) -> float:
    """E_{x~p}[∫_ε^1 E uniform_nelbo dt + E uniform_reconstruction(z_ε) + uniform_prior_kl]."""
    k = len(P_DATA)
    a_eps = float(SCHEDULE.alpha(torch.tensor(eps, dtype=F64)))
    a_1 = SCHEDULE.alpha(torch.ones(1, 1, dtype=F64))
    i = torch.arange(k)
    total = 0.0
    for x in range(k):
        integral = _diffusion_integral(x_hat_of, k, x, eps, 1.0)
        q_eps = _marginal(torch.tensor([a_eps], dtype=F64), F.one_hot(torch.tensor(x), k).to(F64))
        recon = uniform_reconstruction(
            x_hat_of(i, torch.full((k,), a_eps, dtype=F64)).log().unsqueeze(1),
            torch.full((k, 1), x),
            i[:, None],
            a_eps,
        )
        prior = uniform_prior_kl(torch.tensor([[x]]), a_1, k)
        recon = float((q_eps[0] * recon[:, 0]).sum())
        total += float(P_DATA[x]) * (integral + recon + float(prior))
    return total


@pytest.mark.parametrize("eps", [1e-3, 0.05])
def test_full_bound_on_an_exactly_solvable_case(eps):
    """K = 3, L = 1, p = (0.6, 0.3, 0.1). Plugging x̂ into q(z_s | x̂) (Concepts §5) reproduces the
    exact reverse rates q_t(j)/q_t(i) when x̂ = p itself (q_t(·|p) is the marginal q_t), so that
    is the exact denoiser here; then the bound exceeds the entropy by exactly KL(q_1 ‖ Uniform),
    1.9e-7 nats at α_1 = 1e-3, whatever ε. The Bayes posterior x̂ = p(x | z_t) is *not* exact in
    this parameterisation: its bound is valid but 0.45 nats loose."""
    entropy = float(-(P_DATA * P_DATA.log()).sum())
    bound = _uniform_bound(lambda i, a: P_DATA.expand(len(i), 3), eps)
    a_1 = SCHEDULE.alpha(torch.ones(1, dtype=F64))
    q_1 = _marginal(a_1, P_DATA)[0]
    kl_uniform = float((q_1 * (3 * q_1).log()).sum())
    assert bound >= entropy
    assert bound - entropy == pytest.approx(kl_uniform, rel=1e-3, abs=1e-10)
    assert bound - entropy < 2e-7

    def bayes(i, a):
        like = _marginal(a, F.one_hot(i, 3).to(F64))  # q_t(z_t = i | x) over x
        post = P_DATA * like
        return post / post.sum(-1, keepdim=True)

    loose = _uniform_bound(bayes, eps)
    assert loose >= entropy + 0.3


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=5)
def test_full_bound_holds_for_any_denoiser(seed):
    table = torch.rand(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.01
    table /= table.sum(-1, keepdim=True)  # x̂(z_t = i) = table[i], for every t
    bound = _uniform_bound(lambda i, a: table[i], 1e-3)
    assert bound >= float(-(P_DATA * P_DATA.log()).sum())


def test_masked_bound_on_an_exactly_solvable_case():
    """Masked, L = 1: the exact SUBS denoiser at z_t = mask is x̂ = p. Integral + reconstruction
    + prior = (1 - α_1) H + α_1 log(K - 1) >= H."""
    k, mask = 4, 3  # three real tokens and the mask
    p = torch.tensor([0.6, 0.3, 0.1, 0.0], dtype=F64)
    logits = torch.log(p).expand(1, 1, k)
    eps = 1e-3
    t, w = _time_nodes(eps, 1.0)
    alpha, dalpha = SCHEDULE.alpha(t), SCHEDULE.dalpha_dt(t)
    a_eps = SCHEDULE.alpha(torch.tensor(eps, dtype=F64))
    a_1 = float(SCHEDULE.alpha(torch.tensor(1.0, dtype=F64)))
    entropy = float(-(p[:3] * p[:3].log()).sum())
    total = 0.0
    for x in range(3):
        x_0 = torch.full((len(t), 1), x)
        z_m = torch.full((len(t), 1), mask)
        loss = masked_nelbo(
            logits.expand(len(t), 1, k), x_0, z_m, alpha[:, None], dalpha[:, None], mask
        )[:, 0]
        integral = float((w * (1 - alpha) * loss).sum())  # only masked tokens contribute
        recon = float((1 - a_eps) * masked_reconstruction(logits, x_0[:1], z_m[:1], mask))
        prior = float(masked_prior_kl(x_0[:1], a_1, k))
        total += float(p[x]) * (integral + recon + prior)
    assert total >= entropy
    assert total == pytest.approx((1 - a_1) * entropy + a_1 * math.log(k - 1), rel=1e-9)


# --- masked NELBO, AR loss, bound terms ------------------------------------------------------


@given(case=cases, alpha=st.floats(1e-4, 1.0), mask_pos=st.integers(0, 11))
def test_masked_nelbo_is_subs_cross_entropy_on_masked_tokens_only(case, alpha, mask_pos):
    seed, b, length, k = case
    k = max(k, 3)
    mask_id = mask_pos % k
    logits, _, _, a, da = make_case(seed, b, length, k, alpha)
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(0, k - 1, (b, length), generator=g)
    x_0 = x_0 + (x_0 >= mask_id).long()  # never the mask
    masked = torch.rand(b, length, generator=g) < (1 - alpha)
    z_t = torch.where(masked, mask_id, x_0)
    before = logits.clone()
    leaf = logits.requires_grad_()
    out = masked_nelbo(leaf, x_0, z_t, a, da, mask_id)
    assert torch.equal(leaf.detach(), before)
    assert (out >= 0).all() and (out[~masked] == 0).all()
    ref = masked_nelbo_reference(before, x_0, z_t, a, da, mask_id)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-14)
    out.sum().backward()
    assert (leaf.grad[..., mask_id] == 0).all()
    assert (leaf.grad[~masked] == 0).all()


@given(case=cases, alpha=st.floats(1e-4, 0.999), scale=st.floats(0.1, 4.0))
@settings(max_examples=20)
def test_masked_gradient_equals_autograd_of_the_reference(case, alpha, scale):
    seed, b, length, k = case
    k = max(k, 3)
    logits, _, _, a, da = make_case(seed, b, length, k, alpha, scale)
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(0, k - 1, (b, length), generator=g)  # the mask is token k - 1
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, k - 1, x_0)
    w = torch.randn(x_0.shape, dtype=F64, generator=g)
    leaf = logits.requires_grad_()
    (g_fast,) = torch.autograd.grad((masked_nelbo(leaf, x_0, z_t, a, da, k - 1) * w).sum(), leaf)
    ref = masked_nelbo_reference(leaf, x_0, z_t, a, da, k - 1)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), leaf)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-14)


def test_ar_loss_and_reconstruction_terms():
    logits, x_0, z_t, _, _ = make_case(7, 2, 5, 9, 0.5)
    ref = F.cross_entropy(logits.reshape(-1, 9), x_0.reshape(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(ar_loss(logits, x_0), ref)
    assert ar_loss(logits.float(), x_0).dtype == torch.float32
    # Uniform reconstruction: -log of the reverse posterior at α_0 = 1.
    alpha = 0.7
    p = logits.softmax(-1)
    c = (1 - alpha) / 9
    p_i = p.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)
    p_x = p.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
    dec = p_x * (alpha * (z_t == x_0) + c) / (alpha * p_i + c)
    torch.testing.assert_close(uniform_reconstruction(logits, x_0, z_t, alpha), -dec.log())
    # The decoder is a distribution over x_0 for every z_ε.
    total = sum(
        (-uniform_reconstruction(logits, torch.full_like(x_0, j), z_t, alpha)).exp()
        for j in range(9)
    )
    torch.testing.assert_close(total, torch.ones_like(total))
    # Masked reconstruction: 0 where z_ε is a clean token, -log x̂ (mask excluded) where masked.
    z_eps = torch.where(z_t == x_0, x_0, 8)
    x_clean = torch.where(x_0 == 8, 0, x_0)
    ref_logits = logits.clone()
    ref_logits[..., 8] = -math.inf
    nll = -ref_logits.log_softmax(-1).gather(-1, x_clean.unsqueeze(-1)).squeeze(-1)
    z_eps = torch.where(z_eps == x_0, x_clean, 8)
    torch.testing.assert_close(
        masked_reconstruction(logits, x_clean, z_eps, 8), torch.where(z_eps == 8, nll, 0.0)
    )


@given(alpha=st.floats(0.0, 1.0), k=st.integers(2, 50_000))
def test_prior_terms(alpha, k):
    x_0 = torch.zeros(2, 3, dtype=torch.long)
    kl = uniform_prior_kl(x_0, torch.tensor(alpha, dtype=F64), k)
    q_x = alpha + (1 - alpha) / k
    q_o = (1 - alpha) / k
    ref = q_x * math.log(k * q_x) + ((k - 1) * q_o * math.log(k * q_o) if q_o > 0 else 0.0)
    assert kl.shape == (2, 3) and kl.dtype == F64
    assert float(kl[0, 0]) == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert (kl >= 0).all()
    mk = masked_prior_kl(x_0, alpha, k)
    assert float(mk[1, 2]) == pytest.approx(alpha * math.log(k - 1), rel=1e-6, abs=1e-12)


# --- argument checks -------------------------------------------------------------------------


def test_bad_inputs_raise_errors_naming_the_argument():
    logits, x_0, z_t, a, da = make_case(0, 2, 3, 5, 0.5)
    with pytest.raises(ValueError, match="x_0"):
        uniform_nelbo(logits, x_0 + 5, z_t, a, da)
    with pytest.raises(ValueError, match="z_t"):
        uniform_nelbo(logits, x_0, z_t - 10, a, da)
    with pytest.raises(TypeError, match="x_0"):  # jaxtyping: float ids / wrong shapes
        uniform_nelbo(logits, x_0.double(), z_t, a, da)
    with pytest.raises(TypeError, match="x_0"):
        uniform_nelbo(logits, x_0[:, :2], z_t, a, da)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="logits"):
            uniform_nelbo(logits.index_fill(-1, torch.tensor([2]), bad), x_0, z_t, a, da)
    for bad_alpha in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="alpha_t"):
            uniform_nelbo(logits, x_0, z_t, torch.full_like(a, bad_alpha), da)
        with pytest.raises(ValueError, match="alpha_t"):
            masked_nelbo(logits, x_0.clamp(max=3), z_t, torch.full_like(a, bad_alpha), da, 4)
    with pytest.raises(ValueError, match="dalpha_t"):
        uniform_nelbo(logits, x_0, z_t, a, -da)
    with pytest.raises(ValueError, match="alpha_t requires grad"):
        uniform_nelbo(logits, x_0, z_t, a.clone().requires_grad_(), da)
    with pytest.raises(ValueError, match="mask_id"):
        masked_nelbo(logits, x_0.clamp(max=3), z_t, a, da, 5)
    with pytest.raises(ValueError, match="x_0 contains the mask"):
        masked_nelbo(logits, x_0, z_t, a, da, int(x_0[0, 0]))
    with pytest.raises(ValueError, match="targets"):
        ar_loss(logits, x_0 + 5)
    with pytest.raises(ValueError, match="alpha_1"):
        uniform_prior_kl(x_0, 1.5, 5)
    with unchecked():  # value checks off: no error, and nothing silently NaN either
        out = uniform_nelbo(logits, x_0, z_t, a, da)
        assert torch.isfinite(out).all()
