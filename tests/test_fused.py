"""The fused output layer + loss (Concepts §3) equals the unfused path — logits = hidden @ W.T + b,
then the library's loss — in value and in the gradients of hidden, weight, bias and dalpha_t, to
float64 rounding (1e-10) and to 2e-5 in float32; and it never saves anything of size (B·L, K)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff.losses import ar_loss, fused, masked_nelbo, uniform_nelbo
from discdiff.losses.fused import (
    fused_linear_cross_entropy,
    fused_linear_masked_nelbo,
    fused_linear_uniform_nelbo,
)

F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _case(seed, b, length, d, k, alpha, dtype, per_token, bias):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, length, d, generator=g, dtype=F64).to(dtype)
    weight = (torch.randn(k, d, generator=g, dtype=F64) * 3 / math.sqrt(d)).to(dtype)
    b_vec = (0.5 * torch.randn(k, generator=g, dtype=F64)).to(dtype) if bias else None
    x_0 = torch.randint(0, k - 1, (b, length), generator=g)  # K - 1 is the mask of the masked loss
    noise = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, x_0, noise)
    shape = (b, length) if per_token else (b, 1)
    a = (alpha * (0.5 + 0.5 * torch.rand(shape, generator=g, dtype=F64))).to(dtype)
    da = -(0.1 + torch.rand(shape, generator=g, dtype=F64)).to(dtype)
    return hidden, weight, b_vec, x_0, z_t, a, da


def _unfused(name, hidden, weight, bias, x_0, z_t, a, da, reduction):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    k = weight.shape[0]
    if name == "uniform":
        loss = uniform_nelbo(logits, x_0, z_t, a, da)
    elif name == "masked":
        loss = masked_nelbo(logits, x_0, torch.where(z_t == x_0, k - 1, z_t), a, da, k - 1)
    else:
        loss = ar_loss(logits, z_t)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def _fused(name, hidden, weight, bias, x_0, z_t, a, da, reduction, block_rows=None):
    kw = {"bias": bias, "reduction": reduction, "block_rows": block_rows}
    k = weight.shape[0]
    if name == "uniform":
        return fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, a, da, **kw)
    if name == "masked":
        masked_z = torch.where(z_t == x_0, k - 1, z_t)
        return fused_linear_masked_nelbo(hidden, weight, x_0, masked_z, a, da, k - 1, **kw)
    return fused_linear_cross_entropy(hidden, weight, z_t, **kw)


def _value_and_grads(fn, name, inputs, reduction, **kw):
    hidden, weight, bias, x_0, z_t, a, da = inputs
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, da)]
    b_leaf = None if bias is None else bias.clone().requires_grad_()
    loss = fn(name, leaves[0], leaves[1], b_leaf, x_0, z_t, a, leaves[2], reduction, **kw)
    wanted = leaves[:2] + ([b_leaf] if b_leaf is not None else [])
    wanted += [leaves[2]] if name != "ar" else []
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    grads = torch.autograd.grad((loss * w).sum(), wanted)
    return loss.detach(), grads


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@settings(max_examples=40)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 9),
    st.integers(3, 40),
    st.sampled_from([1e-9, 1e-4, 0.1, 0.5, 0.97]),
    st.sampled_from([torch.float64, torch.float32]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["uniform", "masked", "ar"]),
    st.sampled_from(["none", "sum", "mean"]),
    st.sampled_from([None, 1, 2, 5]),
)
def test_fused_equals_unfused(seed, b, length, d, k, alpha, dtype, per_token, bias, name,
                              reduction, block_rows):  # fmt: skip
    inputs = _case(seed, b, length, d, k, alpha, dtype, per_token, bias)
    ref, ref_grads = _value_and_grads(_unfused, name, inputs, reduction)
    out, grads = _value_and_grads(_fused, name, inputs, reduction, block_rows=block_rows)
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
    tol = TOL[dtype]
    assert _rel(out, ref) <= tol
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype and _rel(g, r) <= tol


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_nothing_of_size_rows_times_vocabulary_is_saved(reduction):
    # B·L = 64 rows, K = 500, D = 8: a saved (64, 500) tensor would be the logits or their grad.
    inputs = _case(0, 2, 32, 8, 500, 0.4, torch.float32, False, True)
    hidden, weight, bias, x_0, z_t, a, da = inputs
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    largest = []

    def pack(t):
        largest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fused_linear_uniform_nelbo(leaves[0], leaves[1], x_0, z_t, a, da, bias=leaves[2],
                                          reduction=reduction, block_rows=8)  # fmt: skip
    assert max(largest) <= 8 * 500  # a block at most (saved inside a block, freed with it)
    loss.sum().backward()
    assert all(t.grad is not None for t in leaves)


def test_autocast_matmuls_in_the_autocast_dtype():
    inputs = _case(1, 2, 8, 16, 300, 0.5, torch.float32, False, True)
    hidden, weight, bias, x_0, z_t, a, da = inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = uniform_nelbo(torch.nn.functional.linear(hidden, weight, bias), x_0, z_t, a, da)
        out = fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, a, da, bias=bias)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def test_a_reduced_loss_backpropagates_once_and_a_frozen_weight_gets_no_gradient(monkeypatch):
    hidden, weight, bias, x_0, z_t, a, da = _case(2, 2, 4, 5, 20, 0.5, F64, False, True)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_uniform_nelbo(h, weight, x_0, z_t, a, da, bias=bias, reduction="sum")
    loss.backward(retain_graph=True)
    ref = torch.autograd.grad(uniform_nelbo(h @ weight.T + bias, x_0, z_t, a, da).sum(), h)[0]
    assert _rel(h.grad, ref) <= 1e-12  # weight and bias need no grad: only hidden's is formed
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()
    made = []
    monkeypatch.setattr(fused, "_Grads", lambda *args: made.append(args))
    with torch.no_grad():  # no gradients at all: the forward alone, none formed
        value = fused_linear_uniform_nelbo(h, weight, x_0, z_t, a, da, reduction="mean")
    assert value.requires_grad is False and math.isfinite(float(value)) and not made


def test_arguments_are_checked():
    hidden, weight, bias, x_0, z_t, a, da = _case(3, 2, 3, 4, 10, 0.5, F64, False, True)
    with pytest.raises((TypeError, ValueError)):  # the shapes' D and K disagree
        fused_linear_uniform_nelbo(hidden[..., :3], weight, x_0, z_t, a, da)
    with pytest.raises((TypeError, ValueError)):
        fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, a, da, bias=bias[:5])
    with pytest.raises((TypeError, ValueError), match="reduction"):
        fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, a, da, reduction="max")
    with pytest.raises(ValueError, match="x_0"):
        fused_linear_uniform_nelbo(hidden, weight, x_0 + 10, z_t, a, da)
    with pytest.raises(ValueError, match="impossible"):
        fused_linear_uniform_nelbo(hidden, weight, x_0, (x_0 + 1) % 10, 1.0, da)
    with pytest.raises(ValueError, match="requires grad"):
        fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, a.clone().requires_grad_(), da)
    with pytest.raises(ValueError, match="mask"):
        fused_linear_masked_nelbo(hidden, weight, torch.full_like(x_0, 9), z_t, a, da, 9)
    with pytest.raises(ValueError, match="block_rows"):
        fused_linear_cross_entropy(hidden, weight, z_t, block_rows=0)
    bad = hidden.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fused_linear_cross_entropy(bad, weight, z_t)
