"""Classifier-free guidance on a toy with a known class-conditional law.

Two classes y with known p(x | y) over K = 4 tokens, L = 1: the NELBO-optimal prediction is
p(x | y) with the condition and p(x) = sum_y p(y) p(x | y) without it (for L = 1 the
leave-one-out law is the law itself), and the ancestral sampler with tail="none" is exact at
any number of steps. So gamma = 1 must give p(x | y), gamma = 0 must give p(x), exactly (a
chi-square test), for the uniform and the masked sampler.
"""

from __future__ import annotations

import pytest
import torch

from discdiff import MaskedDiffusion, UniformDiffusion
from discdiff.samplers import guided_logits, guided_uniform_step, psi_posterior, uniform_posterior
from discdiff.testing import Toy, chi_square_p

K = 4
LAW = torch.tensor([[0.70, 0.15, 0.10, 0.05], [0.05, 0.10, 0.25, 0.60]], dtype=torch.float64)
TOY = Toy(LAW, torch.tensor([0.5, 0.5], dtype=torch.float64))  # p(x | y), p(y) = 1/2, L = 1
NULL = TOY.null_label  # the label that means "no condition"


def marginal() -> torch.Tensor:
    return TOY.law()


def oracle(masked: bool = False):
    """The optimal denoiser: log p(x | y) for y in {0, 1}, log p(x) for the null label (the
    masked one with a mask logit, ignored by SUBS)."""
    return TOY.denoiser("masked" if masked else "uniform")


@pytest.mark.parametrize("masked", [False, True])
def test_guidance_scale_one_is_conditional_and_zero_unconditional(masked):
    n, y = 20_000, 1
    g = torch.Generator().manual_seed(0)
    label, null = torch.full((n,), y), torch.full((n,), NULL)
    if masked:
        diffusion, model = MaskedDiffusion(K), oracle(masked=True)
    else:
        diffusion, model = UniformDiffusion(K), oracle()

    def draw(gamma):
        return diffusion.sample(model, n, 1, 6, tail="none", cond={"label": label},
                                guidance_scale=gamma, uncond={"label": null}, generator=g)

    assert chi_square_p(draw(1.0), LAW[y]) > 1e-3
    assert chi_square_p(draw(0.0), marginal()) > 1e-3
    # And guidance moves the law towards the condition: gamma = 3 puts more mass on y's mode.
    mode = int(LAW[y].argmax())
    share = lambda x: float((x == mode).double().mean())  # noqa: E731
    assert share(draw(3.0)) > share(draw(1.0)) + 0.02


def test_guided_step_is_the_renormalised_geometric_mixture_of_the_two_posteriors():
    """One step's empirical law against q_c^gamma q_u^(1-gamma) built from the explicit
    posteriors (``uniform_posterior`` / ``psi_posterior``)."""
    g = torch.Generator().manual_seed(1)
    n, a_s, a_t, gamma = 40_000, 0.6, 0.3, 1.7
    logits_c = torch.randn(1, 1, K, generator=g, dtype=torch.float64)
    logits_u = torch.randn(1, 1, K, generator=g, dtype=torch.float64)
    z_t = torch.tensor([[2]])
    def post(logits, kappa):
        p = logits.softmax(-1)
        if kappa is None:
            return uniform_posterior(p, z_t, a_s, a_t)
        return psi_posterior(p, z_t, a_s, a_t, kappa)

    for kappa in (None, 0.5):
        c, u = post(logits_c, kappa).log(), post(logits_u, kappa).log()
        target = (c * gamma + u * (1 - gamma)).exp()
        target = (target / target.sum()).flatten()
        draws = guided_uniform_step(logits_c.expand(1, n, K), logits_u.expand(1, n, K),
                                    z_t.expand(1, n), a_s, a_t, gamma, kappa=kappa, generator=g)
        assert chi_square_p(draws, target) > 1e-3


def test_guided_logits_limits():
    c = torch.log_softmax(torch.randn(2, 3, K), -1)
    u = torch.log_softmax(torch.randn(2, 3, K), -1)
    torch.testing.assert_close(guided_logits(c, u, 1.0), c)
    torch.testing.assert_close(guided_logits(c, u, 0.0), u)
    c[0, 0, 1] = -torch.inf
    assert torch.isneginf(guided_logits(c, u, 0.5)[0, 0, 1])
    assert not torch.isnan(guided_logits(c, u, 2.0)).any()


def test_guidance_arguments_are_checked():
    model = oracle()
    label = torch.zeros(2, dtype=torch.long)
    d = UniformDiffusion(K)
    with pytest.raises(ValueError, match="uncond"):
        d.sample(model, 2, 1, 2, cond={"label": label}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        d.sample(model, 2, 1, 2, cond={"label": label}, guidance_scale=-1.0,
                 uncond={"label": label})
    with pytest.raises(ValueError, match="uncond"):
        d.sample(model, 2, 1, 2, cond={"label": label}, uncond={"label": label})


def test_guidance_doubles_the_calls():
    records = []
    label = torch.zeros(3, dtype=torch.long)
    UniformDiffusion(K).sample(oracle(), 3, 1, 4, cond={"label": label}, guidance_scale=1.5,
                               uncond={"label": torch.full((3,), NULL)}, callback=records.append)
    assert [r.nfe for r in records] == [2, 4, 6, 8, 10]  # 4 steps + the tail call, each x2
