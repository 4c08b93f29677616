"""The Triton kernels on the CPU, under the Triton interpreter: the uniform NELBO (loss and
gradient) against the library's PyTorch path, and the law of the ancestral / Ψ step against the
three-part mixture computed independently in float64 (dense over the K classes), by chi-square.

The interpreter is slow per operation but not per row: the kernels pack many rows into a
program at small K, so these run in seconds. Shapes stay small.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton")

from discdiff import kernels  # noqa: E402
from discdiff.kernels import triton_kernels  # noqa: E402
from discdiff.losses import uniform_nelbo as torch_uniform_nelbo  # noqa: E402
from discdiff.testing import chi_square_p  # noqa: E402

F64 = torch.float64


def _case(seed: int, b: int, length: int, k: int, alpha: float, scale: float, per_token: bool):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(b, length, k, generator=g)
    x_0 = torch.randint(0, k, (b, length), generator=g)
    noise = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, x_0, noise)
    shape = (b, length) if per_token else (b, 1)
    a = alpha * (0.5 + 0.5 * torch.rand(shape, generator=g))
    da = -(0.1 + torch.rand(shape, generator=g))
    return logits, x_0, z_t, a, da


def _both(logits, x_0, z_t, a, da):
    """Loss and gradient of both paths, under one weighting of the loss."""
    out = []
    for backend in ("triton", "torch"):
        leaf = logits.clone().requires_grad_()
        loss = kernels.uniform_nelbo(leaf, x_0, z_t, a, da, backend=backend)
        w = torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)
        (grad,) = torch.autograd.grad((loss * w).sum(), leaf)
        out.append((loss.detach(), grad))
    return out


# --- uniform NELBO ------------------------------------------------------------------------------


@settings(max_examples=12)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(1, 9),
    st.sampled_from([2, 3, 7, 50, 300]),
    st.sampled_from([1e-9, 1e-5, 0.02, 0.3, 0.9, 0.999]),
    st.sampled_from([0.5, 3.0, 12.0]),
    st.booleans(),
)
def test_uniform_nelbo_matches_the_pytorch_path(seed, b, length, k, alpha, scale, per_token):
    (l_tr, g_tr), (l_pt, g_pt) = _both(*_case(seed, b, length, k, alpha, scale, per_token))
    assert l_tr.dtype == l_pt.dtype == torch.float32
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=2e-6 * float(l_pt.abs().max()) + 1e-30)
    torch.testing.assert_close(g_tr, g_pt, rtol=1e-4, atol=2e-5 * float(g_pt.abs().max()) + 1e-30)


def test_uniform_nelbo_over_several_blocks_and_small_beta_rows():
    # K = 5000 walks the row in three blocks of 2048; alpha 1e-9 gives beta < 0.1 (series rows).
    logits, x_0, z_t, a, da = _case(3, 2, 3, 5000, 0.3, 2.0, True)
    a[0, 0] = 1e-9
    (l_tr, g_tr), (l_pt, g_pt) = _both(logits, x_0, z_t, a, da)
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=1e-7 * float(l_pt.abs().max()))
    torch.testing.assert_close(g_tr, g_pt, rtol=1e-4, atol=2e-5 * float(g_pt.abs().max()))


def test_uniform_nelbo_is_exactly_zero_at_the_one_hot_of_x0_and_finite_with_minus_inf():
    logits, x_0, z_t, a, da = _case(5, 2, 4, 9, 0.4, 2.0, False)
    one_hot = torch.full(logits.shape, -math.inf).scatter(-1, x_0.unsqueeze(-1), 0.0)
    (loss, grad), _ = _both(one_hot, x_0, x_0, a, da)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))
    # -inf logits away from x_0 and z_t: finite, and equal to the PyTorch path.
    keep = torch.zeros(logits.shape, dtype=torch.bool)
    keep.scatter_(-1, x_0.unsqueeze(-1), True).scatter_(-1, z_t.unsqueeze(-1), True)
    banned = torch.where(keep | (torch.arange(9) % 3 == 0), logits, -math.inf)
    (l_tr, g_tr), (l_pt, g_pt) = _both(banned, x_0, z_t, a, da)
    assert torch.isfinite(l_tr).all() and torch.isfinite(g_tr).all()
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(g_tr, g_pt, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_uniform_nelbo_kernel_with_an_ignore_mask(reduction):
    # The kernel's per-token loss, masked and reduced over the tokens that count, is the PyTorch
    # path's; an impossible token (alpha = 1, z_t != x_0) that is ignored raises nothing.
    logits, x_0, z_t, a, da = _case(7, 2, 5, 50, 0.3, 2.0, True)
    a[1, 4], z_t[1, 4] = 1.0, (x_0[1, 4] + 1) % 50
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:], mask[1, 4] = False, False
    out = []
    for backend in ("triton", "torch"):
        leaf = logits.clone().requires_grad_()
        loss = kernels.uniform_nelbo(leaf, x_0, z_t, a, da, mask=mask, reduction=reduction,
                                     backend=backend)  # fmt: skip
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        out.append((loss.detach(), grad))
    (l_tr, g_tr), (l_pt, g_pt) = out
    assert torch.all(g_tr[~mask] == 0) and torch.isfinite(g_tr).all()
    per_token = torch_uniform_nelbo(logits, x_0, z_t, a.clamp(max=0.5), da)[mask].double()
    expected = {"none": None, "sum": per_token.sum(), "mean": per_token.mean()}[reduction]
    if expected is None:
        assert torch.all(l_tr[~mask] == 0)
        torch.testing.assert_close(l_tr[mask].double(), per_token, rtol=2e-5, atol=0.0)
    else:
        torch.testing.assert_close(l_tr.double(), expected, rtol=2e-5, atol=0.0)
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=0.0)
    torch.testing.assert_close(g_tr, g_pt, rtol=1e-4, atol=2e-5 * float(g_pt.abs().max()))


def test_uniform_nelbo_checks_and_dispatch():
    logits, x_0, z_t, a, da = _case(1, 2, 3, 6, 0.5, 1.0, False)
    # On a CPU tensor "auto" is the PyTorch path itself.
    assert torch.equal(kernels.uniform_nelbo(logits, x_0, z_t, a, da),
                       torch_uniform_nelbo(logits, x_0, z_t, a, da))  # fmt: skip
    with pytest.raises(ValueError, match="x_0"):
        kernels.uniform_nelbo(logits, x_0 + 6, z_t, a, da, backend="triton")
    with pytest.raises(ValueError, match="impossible"):
        kernels.uniform_nelbo(logits, x_0, (x_0 + 1) % 6, 1.0, da, backend="triton")
    with pytest.raises((TypeError, ValueError), match="backend"):
        kernels.uniform_nelbo(logits, x_0, z_t, a, da, backend="cuda")  # type: ignore[arg-type]


def test_uniform_nelbo_half_logits():
    logits, x_0, z_t, a, da = _case(2, 2, 5, 40, 0.3, 2.0, False)
    half = logits.to(torch.bfloat16)
    (l_tr, g_tr), (l_pt, g_pt) = _both(half, x_0, z_t, a, da)
    assert g_tr.dtype == torch.bfloat16 and l_tr.dtype == torch.float32
    torch.testing.assert_close(l_tr, l_pt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_tr.float(), g_pt.float(), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_the_fused_head_runs_the_kernels_per_block(reduction, masked):
    # The fused output layer + loss takes the kernels for each block of rows on CUDA ("auto");
    # under the interpreter "triton" forces them: the same loss and gradients as the PyTorch rows.
    from discdiff.losses import fused_linear_uniform_nelbo

    g = torch.Generator().manual_seed(4)
    b, length, d, k = 2, 9, 16, 300
    hidden = torch.randn(b, length, d, generator=g)
    weight = 0.5 * torch.randn(k, d, generator=g)
    bias = torch.randn(k, generator=g)
    x_0 = torch.randint(0, k, (b, length), generator=g)
    z_t = torch.where(torch.rand(b, length, generator=g) < 0.5, x_0,
                      torch.randint(0, k, (b, length), generator=g))  # fmt: skip
    alpha, dalpha = torch.tensor([[0.3], [1e-9]]), torch.full((b, 1), -1.0)  # a series row too
    # The ignore mask: the kernels see only the rows that count (the rest give 0).
    mask = torch.rand(b, length, generator=g) < 0.6 if masked else None
    out = []
    for backend in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        loss = fused_linear_uniform_nelbo(leaves[0], leaves[1], x_0, z_t, alpha, dalpha,
                                          bias=leaves[2], mask=mask, reduction=reduction,
                                          block_rows=5, backend=backend)  # fmt: skip
        if mask is not None and reduction == "none":
            assert torch.all(loss[~mask] == 0) and torch.all(loss[mask] > 0)
        w = torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape)
        grads = torch.autograd.grad((loss * w).sum(), leaves)
        out.append((loss.detach(), grads))
    (l_tr, g_tr), (l_pt, g_pt) = out
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=2e-6 * float(l_pt.abs().max()))
    for a, e in zip(g_tr, g_pt, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=2e-5 * float(e.abs().max()))


# --- one dispatch -------------------------------------------------------------------------------


def test_the_one_backend_rule(monkeypatch):
    from discdiff.kernels import dispatch

    x32, x64 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=F64)
    assert not dispatch.use_triton(x32, "auto")  # a CPU tensor: PyTorch
    assert not dispatch.use_triton(x32, "torch")
    assert dispatch.use_triton(x32, "triton")  # under the interpreter
    with pytest.raises(ValueError, match="backend must be 'auto', 'triton' or 'torch'"):
        dispatch.use_triton(x32, "cuda")  # type: ignore[arg-type]
    # Where "auto" takes Triton (CUDA; here the CPU, forced), float64 work stays on PyTorch.
    monkeypatch.setattr(dispatch, "TRITON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    assert dispatch.use_triton(x32, "auto")
    assert not dispatch.use_triton(x64, "auto")
    assert not dispatch.use_triton(x32, "auto", dtype=F64)
    assert dispatch.use_triton(x64, "triton")  # forced: read as float32
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.use_triton(x32, "triton")


def test_kernels_import_nothing_from_losses_or_samplers():
    import ast

    import discdiff.kernels

    for path in sorted(Path(discdiff.kernels.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("discdiff.losses", "discdiff.samplers")), (path, name)


def test_the_kernels_entry_points_are_the_library_functions():
    import discdiff
    from discdiff.kernels.dispatch import entry_point

    assert entry_point("uniform_nelbo") is discdiff.losses.uniform_nelbo
    assert entry_point("uniform_ancestral_step") is discdiff.samplers.uniform_ancestral_step
    assert kernels.mixture_weights is discdiff.numerics.mixture_weights
    logits, x_0, z_t, a, da = _case(3, 2, 4, 9, 0.4, 2.0, True)
    for backend in ("triton", "torch"):
        ours = kernels.uniform_nelbo(logits, x_0, z_t, a, da, backend=backend)
        assert torch.equal(ours, torch_uniform_nelbo(logits, x_0, z_t, a, da, backend=backend))
    with pytest.raises(ValueError, match="backend='triton' draws from the unfiltered"):
        discdiff.samplers.uniform_ancestral_step(logits, z_t, 0.7, 0.3, top_k=2, backend="triton")


class _Table(torch.nn.Module):
    """A denoiser without the fused head: logits from a table of the token and its neighbour."""

    def __init__(self, k: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(k, k, generator=g))

    def forward(self, z_t, sigma):
        return self.table[z_t] + 0.5 * self.table[z_t.roll(1, -1)]


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_the_diffusion_loss_of_any_model_reaches_the_triton_nelbo(monkeypatch, reduction):
    # "auto" forced to take Triton on the CPU as on CUDA: UniformDiffusion.loss on a model that
    # only returns logits runs the Triton NELBO, with the PyTorch path's loss and gradient.
    from discdiff import UniformDiffusion
    from discdiff.kernels import dispatch
    from discdiff.losses import uniform as uniform_module

    k = 11
    model, diffusion = _Table(k), UniformDiffusion(k)
    x_0 = torch.randint(0, k, (3, 8), generator=torch.Generator().manual_seed(1))

    def loss_and_grad():
        loss = diffusion.loss(model, x_0, generator=torch.Generator().manual_seed(2),
                              reduction=reduction)  # fmt: skip
        (grad,) = torch.autograd.grad(loss.sum(), model.table)
        return loss.detach(), grad

    l_pt, g_pt = loss_and_grad()
    calls: list[int] = []

    class Counted(uniform_module.TritonUniformNelbo):
        @classmethod
        def apply(cls, *args):
            calls.append(1)
            return super().apply(*args)

    monkeypatch.setattr(dispatch, "TRITON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    monkeypatch.setattr(uniform_module, "TritonUniformNelbo", Counted)
    l_tr, g_tr = loss_and_grad()
    assert calls
    torch.testing.assert_close(l_tr, l_pt, rtol=2e-5, atol=1e-6 * float(l_pt.abs().max()))
    torch.testing.assert_close(g_tr, g_pt, rtol=1e-4, atol=2e-5 * float(g_pt.abs().max()))


# --- the ancestral / Ψ step: its law ------------------------------------------------------------


def _exact_law(logits, z, a_s, a_t, kappa):
    """q(z_s | z_t, x̂) per row, dense over the K classes in float64 (Concepts §5 written down)."""
    x_hat = torch.softmax(logits.to(F64), -1)
    k = x_hat.shape[-1]
    e_z = torch.nn.functional.one_hot(z, k).to(F64)
    a_ts = torch.where(a_s > 0, a_t / a_s.clamp_min(1e-300), 1.0)
    num = (k * a_t * x_hat * e_z + (a_ts - a_t) * e_z + (a_s - a_t) * x_hat
           + (1 - a_ts) * (1 - a_s) / k)  # fmt: skip
    posterior = num / num.sum(-1, keepdim=True)
    if kappa is None:
        return posterior
    q0 = (a_t * e_z + (1 - a_t) / k) * x_hat
    q0 = q0 / q0.sum(-1, keepdim=True)
    return kappa * posterior + (1 - kappa) * (a_s * q0 + (1 - a_s) / k)


def _chi2_pvalue(draws, law, groups):
    """One chi-square over all groups of rows (each group shares one law, ``law`` (n, K) per
    row), by ``discdiff.testing.chi_square_p``."""
    return chi_square_p(draws.view(len(groups), -1), law[[rows[0] for rows in groups]],
                        groups=True)


def _configurations(k: int, per: int, seed: int):
    """Logits rows, z_t, alpha_s, alpha_t, kappa for several steps, each repeated ``per`` times."""
    g = torch.Generator().manual_seed(seed)
    steps = [  # (alpha_s, alpha_t, kappa)
        (0.7, 0.4, None), (0.95, 0.05, None), (0.3, 0.0, None), (0.999, 0.99, None),
        (0.7, 0.4, 0.5), (0.9, 0.2, 0.0), (0.6, 0.6, 0.3), (1.0, 0.5, 0.8),
    ]  # fmt: skip
    rows = []
    for j, (a_s, a_t, kap) in enumerate(steps):
        logits = 1.5 * torch.randn(k, generator=g)
        logits[j % k] -= 6.0  # one class of small probability: the tail is checked too
        z = int(torch.randint(0, k, (1,), generator=g))
        rows.append((logits, z, a_s, a_t, kap))
    n = len(rows) * per
    logits = torch.stack([r[0] for r in rows]).repeat_interleave(per, 0)
    z = torch.tensor([r[1] for r in rows]).repeat_interleave(per)
    a_s = torch.tensor([r[2] for r in rows], dtype=F64).repeat_interleave(per)
    a_t = torch.tensor([r[3] for r in rows], dtype=F64).repeat_interleave(per)
    kap = torch.tensor([1.0 if r[4] is None else r[4] for r in rows], dtype=F64)
    kap = kap.repeat_interleave(per)
    groups = [list(range(i * per, (i + 1) * per)) for i in range(len(rows))]
    levels = (x.view(1, n) for x in (z, a_s, a_t, kap))
    return (logits.view(1, n, k), *levels, groups)


def _force_the_kernel(monkeypatch) -> list[int]:
    """Make "auto" pick Triton on CPU tensors, as it does on CUDA (the kernels run under the
    interpreter); returns the list that counts the Triton step's calls."""
    from discdiff.kernels import dispatch
    from discdiff.samplers import steps

    calls: list[int] = []
    original = steps.triton_step

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dispatch, "TRITON_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    monkeypatch.setattr(steps, "triton_step", counted)
    return calls


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_step_law_matches_the_three_part_mixture(backend):
    k, per = 5, 3000
    logits, z, a_s, a_t, kap, groups = _configurations(k, per, seed=11)
    gen = torch.Generator().manual_seed(7)
    draws = kernels.uniform_ancestral_step(logits, z, a_s, a_t, kappa=kap, generator=gen,
                                           backend=backend)  # fmt: skip
    law = _exact_law(logits[0], z[0], a_s[0, :, None], a_t[0, :, None], kap[0, :, None])
    assert _chi2_pvalue(draws[0], law, groups) > 1e-3
    # kappa = None is the ancestral step, the same law as kappa = 1.
    ones = torch.ones_like(kap)
    anc = kernels.uniform_ancestral_step(logits, z, a_s, a_t, generator=gen, backend=backend)
    law1 = _exact_law(logits[0], z[0], a_s[0, :, None], a_t[0, :, None], ones[0, :, None])
    assert _chi2_pvalue(anc[0], law1, groups) > 1e-3


def test_the_samplers_step_dispatches_to_the_kernel_as_on_cuda(monkeypatch):
    # On CUDA without top-k / top-p the samplers' uniform step runs the kernel; here the
    # dispatch is forced and the kernel runs under the interpreter: same law as the library's.
    from discdiff.samplers import steps, uniform_ancestral_step

    calls = _force_the_kernel(monkeypatch)
    k, per = 5, 3000
    logits, z, a_s, a_t, kap, groups = _configurations(k, per, seed=13)
    gen = torch.Generator().manual_seed(9)
    draws = uniform_ancestral_step(logits, z, a_s, a_t, kappa=kap, generator=gen)
    assert calls
    law = _exact_law(logits[0], z[0], a_s[0, :, None], a_t[0, :, None], kap[0, :, None])
    assert _chi2_pvalue(draws[0], law, groups) > 1e-3
    # Float levels, as the loops pass them, and kappa None (ancestral).
    anc = steps.uniform_step(logits, z, 0.7, 0.4, None, None, None, gen)
    law = _exact_law(logits[0], z[0], torch.full((z.numel(), 1), 0.7, dtype=F64),
                     torch.full((z.numel(), 1), 0.4, dtype=F64), None)  # fmt: skip
    assert _chi2_pvalue(anc[0], law, groups) > 1e-3
    # With a filter the library's own path runs.
    calls.clear()
    uniform_ancestral_step(logits, z, a_s, a_t, top_k=3, generator=gen)
    assert not calls


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_step_with_a_row_stream_is_exact_and_row_wise(backend):
    """A RowStream keys each token's draws by (seed, row, call, position): the kernel reads one
    key per token. The law is unchanged (chi-square as above), and row 0 of a batch of 1 is row
    0 of a batch of 4 whose other rows hold other logits."""
    from discdiff.samplers import RowStream

    k, per = 5, 3000
    logits, z, a_s, a_t, kap, groups = _configurations(k, per, seed=17)
    n = logits.shape[1]
    draws = kernels.uniform_ancestral_step(logits, z, a_s, a_t, kappa=kap,
                                           generator=RowStream(3, n), backend=backend)  # fmt: skip
    law = _exact_law(logits[0], z[0], a_s[0, :, None], a_t[0, :, None], kap[0, :, None])
    assert _chi2_pvalue(draws[0], law, groups) > 1e-3
    g = torch.Generator().manual_seed(4)
    batch, z_t = torch.randn(4, 64, k, generator=g), torch.randint(0, k, (4, 64), generator=g)
    one = kernels.uniform_ancestral_step(batch[:1], z_t[:1], 0.7, 0.3,
                                         generator=RowStream(8, 64), backend=backend)  # fmt: skip
    four = kernels.uniform_ancestral_step(batch, z_t, 0.7, 0.3, generator=RowStream(8, 64),
                                          backend=backend)  # fmt: skip
    assert torch.equal(one[0], four[0])
    assert not torch.equal(four[1], four[0])
    # Each draw of the stream is a new call: the same inputs draw anew.
    stream = RowStream(8, 64)
    first = kernels.uniform_ancestral_step(batch, z_t, 0.7, 0.3, generator=stream, backend=backend)
    again = kernels.uniform_ancestral_step(batch, z_t, 0.7, 0.3, generator=stream, backend=backend)
    assert torch.equal(first, four) and not torch.equal(again, first)
    with pytest.raises(ValueError, match="RowStream of length 32"):
        kernels.uniform_ancestral_step(batch, z_t, 0.7, 0.3, generator=RowStream(8, 32),
                                       backend=backend)  # fmt: skip


def test_the_samplers_keep_rows_apart_on_the_kernel_path(monkeypatch):
    """sample_uniform(seed=) with the kernel dispatch forced (as on CUDA): row 0 of a batch of 1
    equals row 0 of a batch of 4, and the kernel ran."""
    from discdiff.samplers import sample_uniform
    from discdiff.schedules import LogLinearSchedule

    calls = _force_the_kernel(monkeypatch)
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(2))

    def denoiser(z, sigma):
        return table[z] + 0.5 * table[z.roll(1, -1)]

    def draw(b):
        return sample_uniform(denoiser, b, 8, 4, schedule=LogLinearSchedule(), vocab_size=7,
                              tail="none", seed=11)  # fmt: skip

    alone, four = draw(1), draw(4)
    assert calls
    assert torch.equal(alone[0], four[0])


def test_the_exponential_race_draws_softmax_across_many_blocks():
    # alpha_t = 0, alpha_s = 1: every draw is the x̂ draw. K = 200 in blocks of 16 classes
    # exercises the float32 screening of later blocks; logits spread over ~15 nats (a tail).
    k, n = 200, 6000
    g = torch.Generator().manual_seed(3)
    row = torch.linspace(0.0, -15.0, k)[torch.randperm(k, generator=g)]
    logits = row.expand(n, k).contiguous()
    out = torch.empty(n, dtype=torch.int64)
    zeros = torch.zeros(n, dtype=F64)
    seed = torch.tensor([123], dtype=torch.int64)
    triton_kernels.ancestral_step(logits, torch.zeros(n, dtype=torch.int64), zeros + 1, zeros, None,
                           seed, out, block_k=16, rows=512)  # fmt: skip
    law = torch.softmax(row.to(F64), -1).expand(n, k)
    assert _chi2_pvalue(out, law, [list(range(n))]) > 1e-3
    # Rows differ by their Philox key: no two rows repeat one stream.
    assert out.unique().numel() > 20


def test_step_is_reproducible_and_checks_its_arguments():
    logits, z, a_s, a_t, kap, _ = _configurations(4, 8, seed=2)
    for backend in ("triton", "torch"):
        one = kernels.uniform_ancestral_step(logits, z, 0.7, 0.3, kappa=0.5, backend=backend,
                                             generator=torch.Generator().manual_seed(5))
        two = kernels.uniform_ancestral_step(logits, z, 0.7, 0.3, kappa=0.5, backend=backend,
                                             generator=torch.Generator().manual_seed(5))
        assert torch.equal(one, two) and one.dtype == torch.int64 and one.shape == z.shape
    with pytest.raises(ValueError, match="alpha_s must be >= alpha_t"):
        kernels.uniform_ancestral_step(logits, z, 0.3, 0.7, backend="triton")
    with pytest.raises(ValueError, match="kappa"):
        kernels.uniform_ancestral_step(logits, z, 0.7, 0.3, kappa=1.5, backend="triton")
    with pytest.raises(ValueError, match="z_t"):
        kernels.uniform_ancestral_step(logits, z + 4, 0.7, 0.3, backend="triton")


def test_mixture_weights_sum_to_one_and_reduce_at_the_ends():
    p_i = torch.tensor([0.0, 0.2, 1.0], dtype=F64)
    one = torch.tensor(1.0, dtype=F64)
    for a_s, a_t, kap in ((0.8, 0.3, None), (0.8, 0.3, 0.4), (1.0, 0.0, None), (0.5, 0.5, 0.0)):
        a_s_t, a_t_t = one * a_s, one * a_t
        kap_t = None if kap is None else one * kap
        stay, hat, unif = kernels.mixture_weights(p_i, a_s_t, a_t_t, kap_t, 10)
        torch.testing.assert_close(stay + hat + unif, torch.ones(3, dtype=F64))
    # alpha_s = 1, alpha_t = 0: a pure draw from x̂; alpha_s = alpha_t: stay.
    _, hat, _ = kernels.mixture_weights(p_i, one, one * 0, None, 10)
    torch.testing.assert_close(hat, torch.ones(3, dtype=F64))
    stay, _, _ = kernels.mixture_weights(p_i, one * 0.4, one * 0.4, None, 10)
    torch.testing.assert_close(stay, torch.ones(3, dtype=F64))


# --- the kernels build for real hardware --------------------------------------------------------


def test_kernels_build_for_hopper():
    """PTX and cubin for sm_90, float32 and bfloat16 logits, at the tilings used at K = 50k: the
    interpreter runs the Python of a kernel, not its compilation (ptxas runs on the host)."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    code = ("from discdiff.kernels.triton_kernels import compile_for\n"
            "compile_for(90, 'fp32'); compile_for(90, 'bf16')")  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
