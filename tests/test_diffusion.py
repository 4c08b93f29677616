import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.schedules import GammaSchedule, LogLinearSchedule
from discdiff.typing import Bag

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_snippet(name: str) -> str:
    text = README.read_text()
    blocks = re.findall(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, f"README must hold exactly one {name} snippet"
    return blocks[0]


def test_readme_snippets_run():
    code = _readme_snippet("training-step")
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert math.isfinite(namespace["loss"].item())
    exec(compile(_readme_snippet("sampling"), "README.md", "exec"), namespace)
    assert namespace["tokens"].shape == namespace["psi"].shape == (4, 32)
    assert namespace["few_step"].shape == (4, 32)
    assert namespace["distiller"].round == 0
    exec(compile(_readme_snippet("prompts"), "README.md", "exec"), namespace)
    assert math.isfinite(namespace["loss"].item())
    given = namespace["prompt_mask"]
    assert torch.equal(namespace["exact"][given], namespace["x_0"][:4][given])


class Recorder(torch.nn.Module):
    """A tiny denoiser that records what it was called with."""

    def __init__(self, vocab_size: int, hidden: int = 8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, hidden)
        self.out = torch.nn.Linear(hidden, vocab_size)
        self.calls: list = []

    def forward(self, z_t, sigma):
        self.calls.append((z_t, sigma))
        if isinstance(z_t, Bag):
            ids, weights = z_t.ids, z_t.weights
            h = (self.emb(ids) * weights.unsqueeze(-1)).sum(-2)
        elif z_t.is_floating_point():
            h = z_t @ self.emb.weight
        else:
            h = self.emb(z_t)
        return self.out(h)


@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 40), step=st.integers(0, 20))
def test_uniform_loss_is_finite_nonnegative_per_token(seed, vocab, step):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(0, vocab, (3, 5), generator=g)
    diffusion = UniformDiffusion(vocab, curriculum=GaussianCurriculum(end_step=10))
    model = Recorder(vocab)
    loss = diffusion.loss(model, x_0, step=step, generator=g)
    assert loss.shape == (3, 5)
    assert torch.isfinite(loss).all() and (loss >= -1e-5).all()
    z_t, sigma = model.calls[-1]
    assert sigma.shape == (3,) and (sigma > 0).all()
    if step < 10:  # the curriculum feeds relaxed probabilities
        assert z_t.shape == (3, 5, vocab)
        torch.testing.assert_close(z_t.sum(-1), torch.ones(3, 5))
    else:
        assert z_t.shape == (3, 5) and not z_t.is_floating_point()


def test_curriculum_top_k_feeds_a_bag():
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, 50, (2, 4), generator=g)
    curriculum = GaussianCurriculum(end_step=5, top_k=4)
    model = Recorder(50)
    loss = UniformDiffusion(50, curriculum=curriculum).loss(model, x_0, generator=g)
    bag = model.calls[-1][0]
    assert isinstance(bag, Bag)
    ids, weights = bag.ids, bag.weights
    assert ids.shape == weights.shape == (2, 4, 4)
    assert torch.isfinite(loss).all()


def test_curriculum_noise_levels_follow_the_transform():
    g = torch.Generator().manual_seed(0)
    curriculum = GaussianCurriculum(window=GammaSchedule(-3.55, -1.85), end_step=1)
    diffusion = UniformDiffusion(1000, curriculum=curriculum)
    model = Recorder(1000)
    t = torch.tensor([1e-3, 0.5, 1.0])
    diffusion.loss(model, torch.zeros(3, 2, dtype=torch.long), t=t, generator=g)
    sigma = model.calls[-1][1]
    schedule = diffusion.curriculum_schedule
    torch.testing.assert_close(sigma, -torch.log(schedule.alpha(t)))
    assert (sigma[1:] > sigma[:-1]).all()


def test_curriculum_gradient_reaches_the_model():
    g = torch.Generator().manual_seed(0)
    model = Recorder(30)
    loss = UniformDiffusion(30, curriculum=GaussianCurriculum()).loss(
        model, torch.randint(0, 30, (2, 6), generator=g), generator=g
    )
    loss.mean().backward()
    assert model.emb.weight.grad.abs().sum() > 0 and model.out.weight.grad.abs().sum() > 0


def test_temperature_anneals_log_linearly():
    c = GaussianCurriculum(tau=1e-1, tau_end=1e-3, end_step=100)
    assert c.tau_at(0) == pytest.approx(1e-1)
    assert c.tau_at(50) == pytest.approx(1e-2)
    assert c.tau_at(100) == pytest.approx(1e-3)


def _exact_uniform_denoiser(p_data: torch.Tensor):
    """The denoiser that makes the reverse process exact for single-token data with law p_data.

    The posterior q(z_s | z_t, x_hat) is a ratio N(x_hat) / D(x_hat) of functions linear in
    x_hat, with D(x) = K q(z_t | x); it equals the true reverse sum_x p(x | z_t) N(x) / D(x) when
    x_hat(x) is proportional to p(x | z_t) / q(z_t | x), i.e. to p_data itself (Bayes' rule).
    """

    def denoiser(z_t, sigma):
        return torch.log(p_data).float().expand(*z_t.shape, p_data.numel())

    return denoiser


def test_uniform_validation_bound_is_above_the_true_nll():
    p_data = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    entropy = -(p_data * p_data.log()).sum().item()
    g = torch.Generator().manual_seed(0)
    n = 20000
    x_0 = torch.multinomial(p_data, n, replacement=True, generator=g).view(n, 1)
    bound = UniformDiffusion(3).nelbo(_exact_uniform_denoiser(p_data), x_0, generator=g)
    total = bound.total.mean().item()
    stderr = bound.total.std().item() / math.sqrt(n)
    assert total >= entropy - 4 * stderr
    assert total <= entropy + 0.01  # an exact denoiser makes the bound nearly tight
    assert (bound.prior >= 0).all() and (bound.reconstruction >= 0).all()


def test_masked_loss_vanishes_on_unmasked_tokens():
    g = torch.Generator().manual_seed(0)
    diffusion = MaskedDiffusion(7)
    model = Recorder(8)
    x_0 = torch.randint(0, 7, (4, 16), generator=g)
    loss = diffusion.loss(model, x_0, generator=g)
    z_t = model.calls[-1][0]
    assert (loss[z_t != diffusion.mask_id] == 0).all()
    assert (loss[z_t == diffusion.mask_id] > 0).all()
    bound = diffusion.nelbo(model, x_0, generator=g)
    assert torch.isfinite(bound.total).all()


def test_masked_validation_bound_is_above_the_true_nll():
    p_data = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    entropy = -(p_data * p_data.log()).sum().item()

    def denoiser(z_t, sigma):  # SUBS: the exact posterior of a masked token is p_data
        logits = torch.log(p_data).float().expand(*z_t.shape, 3)
        return torch.cat([logits, torch.zeros(*z_t.shape, 1)], dim=-1)

    g = torch.Generator().manual_seed(1)
    n = 20000
    x_0 = torch.multinomial(p_data, n, replacement=True, generator=g).view(n, 1)
    bound = MaskedDiffusion(3).nelbo(denoiser, x_0, generator=g)
    total = bound.total.mean().item()
    assert entropy - 4 * bound.total.std().item() / math.sqrt(n) <= total <= entropy + 0.05


def test_bad_inputs_name_the_culprit():
    diffusion = UniformDiffusion(10)
    model = Recorder(10)
    with pytest.raises(ValueError, match="x_0"):
        diffusion.loss(model, torch.full((2, 3), 10))
    with pytest.raises(ValueError, match="denoiser"):
        diffusion.loss(lambda z, s: torch.zeros(2, 3, 9), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        diffusion.loss(
            lambda z, s: torch.full((2, 3, 10), float("nan")), torch.zeros(2, 3, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="vocab_size"):
        UniformDiffusion(1)
    with pytest.raises(ValueError, match="tau"):
        GaussianCurriculum(tau=0.0)
    with pytest.raises(ValueError, match="t must"):
        diffusion.loss(model, torch.zeros(2, 3, dtype=torch.long), t=torch.rand(3))


def test_default_schedule_is_log_linear():
    assert isinstance(UniformDiffusion(5).schedule, LogLinearSchedule)


@pytest.mark.parametrize("time_conditioned", [False, True])
def test_masked_denoiser_sees_the_noise_level_only_when_time_conditioned(time_conditioned):
    diffusion = MaskedDiffusion(5, time_conditioned=time_conditioned)
    model = Recorder(6)
    diffusion.loss(model, torch.zeros(3, 4, dtype=torch.long), t=torch.tensor([0.2, 0.5, 0.9]))
    assert (model.calls[-1][1] > 0).all() == time_conditioned
    samples = diffusion.sample(model, 2, 4, steps=4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 4) and (samples < 5).all()
    assert (model.calls[-1][1] > 0).any() == time_conditioned


def test_uniform_sampling_reproduces_a_single_token_law():
    p_data = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    denoiser = _exact_uniform_denoiser(p_data)
    samples = UniformDiffusion(3).sample(denoiser, 20000, 1, 8, tail="none", generator=g)
    freq = torch.bincount(samples.flatten(), minlength=3).double() / samples.numel()
    # 5 standard errors of a multinomial frequency at n = 20000
    assert (freq - p_data).abs().max() < 5 * math.sqrt(0.25 / 20000)


def test_both_diffusions_are_a_process_around_one_base():
    """The shared pieces live once in ``Diffusion``; each object is its process + schedule."""
    from discdiff.diffusion import Diffusion
    from discdiff.processes import MaskedProcess, UniformProcess

    uniform, masked = UniformDiffusion(5), MaskedDiffusion(5, time_conditioned=True)
    assert isinstance(uniform, Diffusion) and isinstance(masked, Diffusion)
    assert isinstance(uniform.process, UniformProcess) and uniform.process.vocab_size == 5
    assert isinstance(masked.process, MaskedProcess) and masked.process.time_conditioned
    assert (masked.mask_id, masked.model_vocab_size) == (5, 6)
    assert repr(masked) == (
        "MaskedDiffusion(vocab_size=5, schedule=LogLinearSchedule(eps=0.001), eps=0.001, "
        "time_conditioned=True, mask_id=5)"
    )
    assert list(uniform.to_dict()) == ["type", "vocab_size", "schedule", "curriculum", "eps",
                                       "objective"]  # fmt: skip
    assert list(masked.to_dict()) == ["type", "vocab_size", "schedule", "eps", "time_conditioned",
                                      "mask_id"]  # fmt: skip
    with pytest.raises(ValueError, match="MaskedDiffusion.from_dict got a config of type"):
        MaskedDiffusion.from_dict(uniform.to_dict())
