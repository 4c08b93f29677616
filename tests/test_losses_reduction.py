"""The ignore mask and the reductions of every loss path, the fused head's dispatch rule, and the
one calling convention of the diffusions' and the distillers' losses.

Every reduced value is held to an independent float64 computation: the readable formulas of
``discdiff.losses.reference`` (or ``F.cross_entropy``) per token, summed over the tokens that
count with ``math.fsum``, and divided by their count.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from discdiff import DCDistiller, MaskedDiffusion, SDTTDistiller, UniformDiffusion
from discdiff.losses import (
    dispatch,
    fused_linear_cross_entropy,
    fused_linear_masked_nelbo,
    fused_linear_uniform_nelbo,
    masked_nelbo,
    masked_nelbo_reference,
    uniform_nelbo,
    uniform_nelbo_reference,
)
from discdiff.models import DiT, DiTConfig
from discdiff.schedules import GammaSchedule

F64 = torch.float64
B, L, D, K = 3, 6, 5, 11
MASK_ID = K - 1
REDUCTIONS = ("none", "sum", "mean")


def _case(seed: int = 0, masked_process: bool = False):
    """float64 hidden (B, L, D), weight (K, D), bias (K,), ids, per-token levels, and a mask with
    at least one ignored and one counted token per sequence."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g, dtype=F64)
    weight = torch.randn(K, D, generator=g, dtype=F64)
    bias = torch.randn(K, generator=g, dtype=F64)
    k_data = K - 1 if masked_process else K
    x_0 = torch.randint(0, k_data, (B, L), generator=g)
    if masked_process:
        z_t = torch.where(torch.rand(B, L, generator=g) < 0.6, MASK_ID, x_0)
    else:
        z_t = torch.where(torch.rand(B, L, generator=g) < 0.5, x_0,
                          torch.randint(0, K, (B, L), generator=g))  # fmt: skip
    alpha = 0.05 + 0.9 * torch.rand(B, L, generator=g, dtype=F64)
    dalpha = -(0.1 + torch.rand(B, L, generator=g, dtype=F64))
    mask = torch.rand(B, L, generator=g) < 0.6
    mask[:, 0], mask[:, 1] = True, False
    return hidden, weight, bias, x_0, z_t, alpha, dalpha, mask


def _reference_per_token(kind: str, logits, x_0, z_t, alpha, dalpha):
    if kind == "uniform":
        return uniform_nelbo_reference(logits, x_0, z_t, alpha, dalpha)
    if kind == "masked":
        return masked_nelbo_reference(logits, x_0, z_t, alpha, dalpha, MASK_ID)
    return F.cross_entropy(logits.reshape(-1, K), x_0.reshape(-1), reduction="none").view(B, L)


def _expected(per_token: torch.Tensor, mask: torch.Tensor, reduction: str):
    """float64 by hand: 0 at the ignored tokens, fsum over the counted ones, over their count."""
    if reduction == "none":
        return torch.where(mask, per_token, 0.0)
    counted = [float(v) for v, m in zip(per_token.flatten(), mask.flatten(), strict=True) if m]
    total = math.fsum(counted)
    return torch.tensor(total if reduction == "sum" else total / len(counted), dtype=F64)


def _call(kind: str, path: str, case, reduction: str, mask):
    hidden, weight, bias, x_0, z_t, alpha, dalpha, _ = case
    kw = {"mask": mask, "reduction": reduction}
    if path == "fused":
        if kind == "uniform":
            return fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, alpha, dalpha, bias=bias,
                                              block_rows=4, **kw)  # fmt: skip
        if kind == "masked":
            return fused_linear_masked_nelbo(hidden, weight, x_0, z_t, alpha, dalpha, MASK_ID,
                                             bias=bias, block_rows=4, **kw)  # fmt: skip
        return fused_linear_cross_entropy(hidden, weight, x_0, bias=bias, block_rows=4, **kw)
    logits = hidden @ weight.T + bias
    if kind == "uniform":
        return uniform_nelbo(logits, x_0, z_t, alpha, dalpha, **kw)
    return masked_nelbo(logits, x_0, z_t, alpha, dalpha, MASK_ID, **kw)


PATHS = [("uniform", "unfused"), ("uniform", "fused"), ("masked", "unfused"),
         ("masked", "fused"), ("cross_entropy", "fused")]  # fmt: skip


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("kind", "path"), PATHS)
def test_every_path_reduces_over_the_tokens_that_count(kind, path, reduction):
    case = _case(1, masked_process=kind == "masked")
    hidden, weight, bias, x_0, z_t, alpha, dalpha, mask = case
    reference = _reference_per_token(kind, hidden @ weight.T + bias, x_0, z_t, alpha, dalpha)
    got = _call(kind, path, case, reduction, mask)
    want = _expected(reference, mask, reduction)
    assert got.dtype == F64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    if reduction == "none":
        assert torch.all(got[~mask] == 0)
    # Without a mask every token counts: "mean" divides by B * L.
    unmasked = _call(kind, path, case, reduction, None)
    torch.testing.assert_close(unmasked, _expected(reference, torch.ones_like(mask), reduction),
                               rtol=1e-12, atol=1e-14)  # fmt: skip


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("kind", ["uniform", "masked", "cross_entropy"])
def test_the_reduced_fused_gradient_is_the_materialised_one(kind, reduction):
    # The fused head forms the gradient in the forward pass; it must equal autograd through the
    # materialised logits of the readable formula, for hidden, weight, bias and dalpha_t.
    case = _case(2, masked_process=kind == "masked")
    hidden, weight, bias, x_0, z_t, alpha, dalpha, mask = case
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias, dalpha)]
    fused_case = (*leaves[:3], x_0, z_t, alpha, leaves[3], mask)
    fused = _call(kind, "fused", fused_case, reduction, mask)
    g_fused = torch.autograd.grad(fused, leaves, allow_unused=True)
    ref_leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias, dalpha)]
    logits = ref_leaves[0] @ ref_leaves[1].T + ref_leaves[2]
    per_token = _reference_per_token(kind, logits, x_0, z_t, alpha, ref_leaves[3])
    counted = torch.where(mask, per_token, 0.0).sum()
    plain = counted / mask.sum() if reduction == "mean" else counted
    g_plain = torch.autograd.grad(plain, ref_leaves, allow_unused=True)
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-12, atol=0.0)
    for name, a, b in zip(("hidden", "weight", "bias", "dalpha"), g_fused, g_plain, strict=True):
        if kind == "cross_entropy" and name == "dalpha":
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)
    assert torch.all(g_fused[0][~mask] == 0)  # ignored tokens: no gradient to their hidden state


@pytest.mark.parametrize(("kind", "path"), PATHS)
def test_ignored_tokens_are_never_read_and_an_empty_mask_gives_zero(kind, path):
    hidden, weight, bias, x_0, z_t, alpha, dalpha, mask = _case(3, kind == "masked")
    # At ignored tokens: an impossible uniform token (alpha = 1, z_t != x_0; +inf, rejected when
    # counted) and a NaN hidden state. Neither reaches the loss or the gradient.
    if kind == "uniform":
        alpha = alpha.clone()
        alpha[0, 1], z_t[0, 1] = 1.0, (x_0[0, 1] + 1) % K
    if path == "fused":
        hidden = hidden.clone()
        hidden[1, 1] = math.nan
    leaf = hidden.clone().requires_grad_()
    case = (leaf, weight, bias, x_0, z_t, alpha, dalpha, mask)
    loss = _call(kind, path, case, "mean", mask)
    (grad,) = torch.autograd.grad(loss, leaf)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    empty = torch.zeros_like(mask)
    for reduction in ("sum", "mean"):
        nothing = _call(kind, path, case, reduction, empty)
        assert nothing.item() == 0.0
    assert torch.all(_call(kind, path, case, "none", empty) == 0)


def test_mask_and_reduction_errors_name_the_argument():
    hidden, weight, bias, x_0, z_t, alpha, dalpha, mask = _case()
    logits = hidden @ weight.T
    model = _dit(K)
    for bad, what in ((mask.long(), "bool tensor"), (mask[:, :2], "shape")):
        # The typed losses reject it at their signature (a TypeError naming the parameter).
        with pytest.raises(TypeError, match="mask"):
            uniform_nelbo(logits, x_0, z_t, alpha, dalpha, mask=bad)
        with pytest.raises(TypeError, match="mask"):
            fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, alpha, dalpha, mask=bad)
        for diffusion in (UniformDiffusion(K), MaskedDiffusion(K - 1)):
            with pytest.raises(ValueError, match=f"mask must .*{what}"):
                diffusion.loss(model, x_0 % (K - 1), mask=bad)
    with pytest.raises(TypeError, match="reduction"):
        uniform_nelbo(logits, x_0, z_t, alpha, dalpha, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be 'none', 'sum' or 'mean'"):
        UniformDiffusion(K).loss(model, x_0, reduction="batchmean")  # type: ignore[arg-type]


# --- the dispatch rule ---------------------------------------------------------------------------


def test_the_rule_takes_the_fused_head_where_it_pays_or_where_the_logits_would_not_fit():
    pays = dispatch.fused_head_pays
    k = 50257
    # The CPU: never for speed (measured: at most ~13 % faster at D = 256, no gain at D = 768).
    assert dispatch.CROSSOVER_LOGITS["cpu"] == math.inf
    fits = (4 << 30) // (8 * k)  # rows whose float32 logits and gradient fit in 4 GiB
    assert not pays(1, k, "cpu", reduced=True) and not pays(fits, k, "cpu", reduced=True)
    assert pays(fits + 1, k, "cpu", reduced=True)
    # Per-token losses recompute the logits in the backward: fused only past the memory budget
    # (the logits and their gradient, 4 bytes each: 4 GiB on the CPU, 2 GiB elsewhere).
    assert not pays(fits // 2, k, "cpu", reduced=False) and not pays(fits, k, "cpu", reduced=False)
    assert pays(fits + 1, k, "cpu", reduced=False)
    assert pays(fits // 2 + 1, k, "cpu", reduced=False, element_bytes=8)  # float64 logits
    # An accelerator: reduced always fused; per-token from 2 GiB of logits and gradient.
    for device in ("cuda", torch.device("mps"), "xpu:1"):
        assert pays(1, 2, device, reduced=True)
        assert not pays(fits // 2, k, device, reduced=False)
        assert pays(fits // 2 + 1, k, device, reduced=False)
    with pytest.raises(ValueError, match="vocab_size"):
        pays(4, 0, "cpu", reduced=True)


def _dit(vocab_size: int, dtype=F64) -> DiT:
    torch.manual_seed(0)
    config = {"hidden_size": 16, "n_blocks": 1, "n_heads": 2, "cond_dim": 8, "dropout": 0.0}
    model = DiT(DiTConfig(vocab_size=vocab_size, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.to(dtype)


def _x0(k: int, seed: int = 4) -> torch.Tensor:
    return torch.randint(0, k, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("diffusion", [UniformDiffusion(K), MaskedDiffusion(K - 1)],
                         ids=["uniform", "masked"])  # fmt: skip
def test_the_diffusions_follow_the_rule_and_fused_forces_either_path(diffusion, monkeypatch):
    model = _dit(K)
    calls: list[int] = []
    original = model.hidden_states
    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "hidden_states", counted)
    x_0 = _x0(K - 1)

    def fused_used(**kw) -> bool:
        calls.clear()
        diffusion.loss(model, x_0, **kw)
        return bool(calls)

    # The CPU, 198 logits: the default takes the logits, reduced or not.
    assert not fused_used() and not fused_used(reduction="mean")
    assert fused_used(fused=True) and fused_used(fused=True, reduction="sum")
    assert not fused_used(fused=False, reduction="mean")
    # With the crossover at 0 (as on an accelerator), a reduced loss is fused, a per-token not.
    monkeypatch.setitem(dispatch.CROSSOVER_LOGITS, "cpu", 0)
    assert fused_used(reduction="mean") and not fused_used()
    # A budget the logits exceed: fused whatever the reduction.
    monkeypatch.setitem(dispatch.LOGITS_BUDGET_BYTES, "cpu", 8)
    assert fused_used() and not fused_used(fused=False)
    with pytest.raises(ValueError, match="fused must be None"):
        diffusion.loss(model, x_0, fused="yes")
    # A denoiser without a FusedHead always gives its logits, even under fused=True.
    assert diffusion.loss(lambda z, s: model(z, s), x_0, fused=True).shape == (B, L)


# --- the diffusions' losses, one convention ------------------------------------------------------


def _diffusions():
    curriculum_window = GammaSchedule(-3.0, 0.5)
    from discdiff import GaussianCurriculum

    curriculum = GaussianCurriculum(window=curriculum_window, tau=0.1, end_step=10)
    return {
        "uniform": UniformDiffusion(K),
        "curriculum": UniformDiffusion(K, curriculum=curriculum),
        "masked": MaskedDiffusion(K - 1),
    }


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", ["uniform", "curriculum", "masked"])
def test_diffusion_loss_reductions_and_gradients_with_a_mask(name, fused):
    diffusion = _diffusions()[name]
    model = _dit(K)
    x_0 = _x0(K - 1)
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(5)) < 0.5
    mask[:, 0] = True
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)

    def run(reduction: str, fused_path: bool):
        model.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(6)
        loss = diffusion.loss(model, x_0, 1, t=t, generator=g, fused=fused_path, mask=mask,
                              reduction=reduction)  # fmt: skip
        reduced = loss if loss.ndim == 0 else loss.sum()
        reduced.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}  # fmt: skip

    per_token, _ = run("none", fused)
    assert torch.all(per_token[~mask] == 0)
    total, g_sum = run("sum", fused)
    mean, g_mean = run("mean", fused)
    torch.testing.assert_close(total, _expected(per_token, mask, "sum"), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(mean, _expected(per_token, mask, "mean"), rtol=1e-12, atol=0.0)
    # The reduced loss of one path has the gradient of the other (float64).
    other_mean, g_other = run("mean", not fused)
    torch.testing.assert_close(mean, other_mean, rtol=1e-10, atol=0.0)
    assert g_mean.keys() == g_other.keys() == g_sum.keys()
    for n in g_mean:
        torch.testing.assert_close(g_mean[n], g_other[n], rtol=1e-9, atol=1e-12, msg=n)
        torch.testing.assert_close(g_mean[n] * mask.sum(), g_sum[n], rtol=1e-9, atol=1e-12)


def test_step_is_positional_or_keyword_everywhere():
    diffusion = _diffusions()["curriculum"]  # step matters: the curriculum ends at step 10
    model = _dit(K)
    x_0, t = _x0(K - 1), torch.tensor([0.2, 0.4, 0.6], dtype=F64)
    for step in (0, 12):
        g = torch.Generator().manual_seed(1)
        by_position = diffusion.loss(model, x_0, step, t=t, generator=g)
        by_keyword = diffusion.loss(model, x_0, step=step, t=t,
                                    generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert torch.equal(by_position, by_keyword)
    masked = MaskedDiffusion(K - 1)
    assert torch.equal(masked.loss(model, x_0, 3, t=t, generator=torch.Generator().manual_seed(1)),
                       masked.loss(model, x_0, step=3, t=t,
                                   generator=torch.Generator().manual_seed(1)))  # fmt: skip


def test_the_nelbo_mean_averages_the_total_over_the_tokens_that_count():
    model = _dit(K)
    x_0 = _x0(K - 1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:], mask[2, 1] = False, False
    for diffusion in (UniformDiffusion(K), MaskedDiffusion(K - 1)):
        bound = diffusion.nelbo(model, x_0, generator=torch.Generator().manual_seed(2))
        total = bound.total.double()
        assert bound.mean().item() == pytest.approx(math.fsum(total.flatten().tolist()) / (B * L),
                                                    rel=1e-6)  # fmt: skip
        kept = [float(v) for v, m in zip(total.flatten(), mask.flatten(), strict=True) if m]
        assert bound.mean(mask).item() == pytest.approx(math.fsum(kept) / len(kept), rel=1e-6)
        with pytest.raises(ValueError, match="mask must"):
            bound.mean(mask.float())


# --- the distillers --------------------------------------------------------------------------


class _Toy(nn.Module):
    """A small denoiser (B, L) ids -> (B, L, K) logits, reading the noise level."""

    def __init__(self, k_out: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(k_out, 8)
        self.level = nn.Linear(1, 8)
        self.out = nn.Linear(8, k_out)

    def forward(self, z, sigma, **cond):
        h = torch.tanh(self.emb(z) + self.level(sigma.float().view(-1, 1, 1)))
        return self.out(h)


@pytest.mark.parametrize("distiller_kind", ["dcd", "sdtt"])
def test_distiller_losses_take_the_mask_and_the_reduction(distiller_kind):
    k = 7
    if distiller_kind == "dcd":
        distiller = DCDistiller(_Toy(k, 0), k, initial_steps=8, steps_per_round=3, n_rounds=2,
                                window=GammaSchedule(-4.0, 3.0))  # fmt: skip
        student = _Toy(k, 1)
    else:
        distiller = SDTTDistiller(_Toy(k + 1, 0), k, teacher_steps=2, initial_steps=8,
                                  steps_per_round=3, n_rounds=2)  # fmt: skip
        student = _Toy(k + 1, 1)
    x_0 = torch.randint(0, k, (B, L), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 2:] = False

    def run(reduction: str, step_by_keyword: bool = False, **kw):
        g = torch.Generator().manual_seed(9)
        if step_by_keyword:
            return distiller.loss(student, x_0, step=2, generator=g, reduction=reduction, **kw)
        return distiller.loss(student, x_0, 2, generator=g, reduction=reduction, **kw)

    plain = run("none").detach()
    per_token = run("none", mask=mask).detach()
    assert torch.all(per_token[~mask] == 0)
    torch.testing.assert_close(per_token[mask], plain[mask], rtol=1e-12, atol=0.0)
    for reduction in ("sum", "mean"):
        got = run(reduction, step_by_keyword=True, mask=mask).detach().double()
        torch.testing.assert_close(got, _expected(plain.double(), mask, reduction),
                                   rtol=1e-6, atol=1e-12)  # fmt: skip
    loss = run("mean", mask=mask)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="mask must"):
        run("none", mask=mask[:, :3])
    assert distiller.loss(student, x_0).shape == (B, L)  # step defaults to 0
