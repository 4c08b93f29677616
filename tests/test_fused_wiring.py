"""The fused output layer wired into the training losses: the ``FusedHead`` protocol, the
diffusion losses and the example's AR loss through it against the same losses of the logits,
the per-row closed form shared with the kernels, and a compiled training step."""

from __future__ import annotations

import pytest
import torch

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.denoise import FusedHead, denoise_head, has_fused_head
from discdiff.losses import uniform as uniform_module
from discdiff.models import DiT, DiTConfig
from discdiff.schedules import GammaSchedule

K = 61
B, L = 3, 7

# The documented exactness of the fused path against the logits' path (max |a - b| / max |b|,
# loss and every parameter's gradient).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def make(vocab_size: int = K, dtype: torch.dtype = torch.float32, **overrides) -> DiT:
    """A tiny DiT, without dropout, whose zero inits are replaced by random weights."""
    torch.manual_seed(0)
    config = {"hidden_size": 32, "n_blocks": 2, "n_heads": 4, "cond_dim": 16, "dropout": 0.0}
    model = DiT(DiTConfig(vocab_size=vocab_size, **{**config, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.to(dtype)


def tokens(k: int = K, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (B, L), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def loss_and_grads(loss_fn, model: torch.nn.Module):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)
    (loss * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(fused, plain, dtype: torch.dtype, label: str) -> None:
    (a, ga), (b, gb) = fused, plain
    assert a.dtype == b.dtype == dtype
    assert ga.keys() == gb.keys() and len(ga) > 0
    loss_err = rel(a, b)
    grad_err = max(rel(ga[n], gb[n]) for n in gb)
    print(f"{label} {dtype}: loss {loss_err:.1e}, gradients {grad_err:.1e}")
    assert loss_err <= TOLERANCE[dtype] and grad_err <= TOLERANCE[dtype], label


# --- the protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_the_dit_offers_its_hidden_state_and_output_projection(causal):
    model = make(causal=causal).eval()
    assert isinstance(model, FusedHead) and has_fused_head(model)
    x = tokens()
    sigma = None if causal else torch.tensor([0.3, 2.0, 0.7])
    hidden = model.hidden_states(x, sigma)
    weight, bias = model.output_projection()
    assert hidden.shape == (B, L, 32) and weight.shape == (K, 32) and bias.shape == (K,)
    # Views of the live (padded) parameters: the first K rows.
    assert weight.data_ptr() == model.final.linear.weight.data_ptr()
    torch.testing.assert_close(hidden @ weight.T + bias, model(x, sigma))


def test_soft_inputs_and_bags_reach_the_hidden_state_too():
    from discdiff.typing import Bag

    model = make().eval()
    sigma = torch.tensor([0.3, 2.0, 0.7])
    probs = torch.softmax(torch.randn(B, L, K), -1)
    bag = Bag(torch.randint(0, K, (B, L, 3)), torch.rand(B, L, 3))
    weight, bias = model.output_projection()
    for z_t in (probs, bag):
        torch.testing.assert_close(model.hidden_states(z_t, sigma) @ weight.T + bias,
                                   model(z_t, sigma))  # fmt: skip


def test_wrappers_and_plain_callables_are_not_fused_heads():
    model = make()
    assert not has_fused_head(torch.compile(model, backend="eager"))  # only __call__ compiles
    assert not has_fused_head(lambda z, s: z)
    torch._dynamo.reset()


class _Broken(torch.nn.Module):
    """A FusedHead whose parts are wrong in one chosen way."""

    def __init__(self, fault: str):
        super().__init__()
        self.fault = fault
        self.inner = make()

    def forward(self, z_t, sigma, **cond):
        return self.inner(z_t, sigma, **cond)

    def hidden_states(self, z_t, sigma, **cond):
        hidden = self.inner.hidden_states(z_t, sigma, **cond)
        return hidden * float("nan") if self.fault == "nan" else hidden

    def output_projection(self):
        if self.fault == "padded":
            return self.inner.final.linear.weight, self.inner.final.linear.bias
        return self.inner.output_projection()


@pytest.mark.parametrize(
    ("fault", "message"),
    [("nan", "hidden state with NaN or inf"), ("padded", "no padding rows")],
)
def test_the_seam_checks_the_hidden_state_and_the_projection(fault, message):
    model = _Broken(fault)
    with pytest.raises(ValueError, match=message):
        UniformDiffusion(K).loss(model, tokens(), fused=True)
    with pytest.raises(ValueError, match=message):
        denoise_head(model, tokens(), torch.ones(B), vocab_size=K)
    UniformDiffusion(K).loss(model, tokens(), fused=False)  # the logits path is unaffected


# --- exactness of the fused training losses -----------------------------------------------------


def _curriculum(top_k=None) -> GaussianCurriculum:
    return GaussianCurriculum(window=GammaSchedule(-3.0, 0.5), tau=0.1, end_step=10, top_k=top_k)


DIFFUSIONS = {
    "uniform": lambda: UniformDiffusion(K),
    "curriculum": lambda: UniformDiffusion(K, curriculum=_curriculum()),
    "curriculum top-k": lambda: UniformDiffusion(K, curriculum=_curriculum(top_k=5)),
    "masked": lambda: MaskedDiffusion(K),
    "masked, time-conditioned": lambda: MaskedDiffusion(K, time_conditioned=True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(DIFFUSIONS))
def test_fused_diffusion_losses_equal_the_losses_of_the_logits(name, dtype):
    diffusion = DIFFUSIONS[name]()
    model = make(getattr(diffusion, "model_vocab_size", K), dtype)
    x_0 = tokens()
    t = torch.tensor([0.05, 0.5, 0.95], dtype=dtype)

    def loss(fused: bool):
        return lambda: diffusion.loss(model, x_0, t=t, generator=torch.Generator().manual_seed(5),
                                      fused=fused)  # fmt: skip

    fused, plain = loss_and_grads(loss(True), model), loss_and_grads(loss(False), model)
    assert_same(fused, plain, dtype, name)
    # The padding rows of the projection get no gradient on either path.
    for _, grads in (fused, plain):
        assert torch.all(grads["final.linear.weight"][K + 1 :] == 0)


def test_discrete_loss_can_be_fused_and_the_bound_takes_the_logits(monkeypatch):
    diffusion, model = UniformDiffusion(K), make(dtype=torch.float64)
    x_0, t = tokens(), torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64)
    calls = []
    original = model.hidden_states

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "hidden_states", counted)
    fused = diffusion.discrete_loss(model, x_0, t, generator=torch.Generator().manual_seed(2),
                                    fused=True)  # fmt: skip
    assert calls
    plain = diffusion.discrete_loss(model, x_0, t, generator=torch.Generator().manual_seed(2),
                                    fused=False)  # fmt: skip
    assert rel(fused.detach(), plain.detach()) <= 1e-10
    calls.clear()
    diffusion.nelbo(model, x_0, generator=torch.Generator().manual_seed(3))
    MaskedDiffusion(K - 1).nelbo(model, tokens(K - 1), generator=torch.Generator().manual_seed(3))
    assert not calls


def test_padding_mask_conditioning_reaches_the_fused_path():
    diffusion, model = UniformDiffusion(K), make(dtype=torch.float64)
    x_0, t = tokens(), torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 4:] = False
    cond = {"padding_mask": mask}

    def loss(fused: bool):
        return lambda: diffusion.loss(model, x_0, t=t, cond=cond, fused=fused,
                                      generator=torch.Generator().manual_seed(4))  # fmt: skip

    assert_same(loss_and_grads(loss(True), model), loss_and_grads(loss(False), model),
                torch.float64, "uniform, padding mask")  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_example_ar_loss_is_fused(dtype):
    from examples.objectives import ARObjective

    model = make(dtype=dtype, causal=True)
    x_0 = tokens()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 5:] = False

    def loss(fused: bool, mask=None):
        objective = ARObjective(K, bos_id=0, fused=fused)
        return lambda: objective.loss(model, x_0, step=0, t=None, generator=None, mask=mask)

    for m in (None, mask):
        assert_same(loss_and_grads(loss(True, m), model), loss_and_grads(loss(False, m), model),
                    dtype, "AR" + ("" if m is None else ", padding mask"))  # fmt: skip


# --- one formula, once --------------------------------------------------------------------------


def test_row_terms_series_flag_changes_nothing_where_no_row_needs_the_series():
    g = torch.Generator().manual_seed(0)
    n, k = 64, 50
    p = torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), -1)
    x = torch.randint(0, k, (n,), generator=g)
    i = torch.where(torch.rand(n, generator=g) < 0.5, x, torch.randint(0, k, (n,), generator=g))
    alpha = 0.01 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)
    beta, small = uniform_module.series_split(alpha, k)
    assert not small.any()
    rest_p = p.scatter(1, i[:, None], 0.0).scatter(1, x[:, None], 0.0)
    args = (p.gather(1, i[:, None]).squeeze(1), p.gather(1, x[:, None]).squeeze(1),
            rest_p.sum(-1), torch.log1p(beta[:, None] * rest_p).sum(-1),
            torch.zeros(n, dtype=torch.float64), i == x, alpha, k)  # fmt: skip
    d_series, saved_series = uniform_module.row_terms(*args, series=True)
    d_plain, saved_plain = uniform_module.row_terms(*args, series=False)
    assert torch.equal(d_series, d_plain)
    assert all(torch.equal(a, b) for a, b in zip(saved_series, saved_plain, strict=True))


def test_the_kernels_use_the_library_row_terms():
    from discdiff.kernels import nelbo

    assert nelbo.row_terms is uniform_module.row_terms


# --- a compiled training step -------------------------------------------------------------------


def test_a_training_step_of_the_uniform_loss_compiles_in_one_graph():
    # aot_eager traces through dynamo + AOTAutograd as inductor does, without its C++ codegen
    # (minutes on a small CPU). fullgraph: the typechecked wrappers and the value checks must
    # step aside while tracing, and the traced loss takes the logits' path.
    model = make().train()
    diffusion = UniformDiffusion(K)
    x_0, t = tokens(), torch.tensor([0.2, 0.5, 0.9])

    def step(x_0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion.loss(model, x_0, t=t).mean()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.manual_seed(3)
    loss = compiled(x_0, t)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    eager = step(x_0, t)
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_an_in_place_compiled_model_runs_the_fused_loss_through_its_compiled_forward():
    model = make().train()
    diffusion = UniformDiffusion(K)
    x_0, t = tokens(), torch.tensor([0.2, 0.5, 0.9])
    expected = diffusion.loss(model, x_0, t=t, generator=torch.Generator().manual_seed(1))
    model.compile(backend="aot_eager")
    assert has_fused_head(model)
    got = diffusion.loss(model, x_0, t=t, generator=torch.Generator().manual_seed(1))
    got.mean().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert model.final.linear.weight.grad is not None
    torch._dynamo.reset()
