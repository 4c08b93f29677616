"""The x_hat <-> posterior conversion (SPEC §11) against Bayes' rule with explicit matrices, and
wired through the uniform samplers, the NELBO, DCD and the cross-entropy objective on toys whose
optimal denoisers of both kinds are known by enumeration."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff import DCDistiller, UniformDiffusion
from discdiff.adapters import as_denoiser
from discdiff.parameterization import (
    convert_logits,
    evidence_shift,
    posterior_from_x_hat,
    x_hat_from_posterior,
)
from discdiff.processes import uniform_corrupt
from discdiff.samplers import TimeGrid, sample_uniform
from discdiff.schedules import GammaSchedule, LogLinearSchedule
from discdiff.testing import (
    UniformOracle,
    all_sequences,
    chi_square_p,
    random_law,
    sequence_ids,
    uniform_chain,
)


def _bayes_posterior(x_hat: torch.Tensor, z: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    """p(x = j | z) ∝ x_hat_j q(z | x = j), q(z | x) = alpha [z = x] + (1 - alpha) / K."""
    q = alpha * torch.eye(k, dtype=torch.float64) + (1 - alpha) / k  # q[x, z]
    joint = x_hat * q[:, z].transpose(0, 1).unsqueeze(0)  # (1, L, K): x_hat_j q(z_l | j)
    return joint / joint.sum(-1, keepdim=True)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 9),
    length=st.integers(1, 5),
    alpha=st.floats(1e-6, 1 - 1e-6),
    seed=st.integers(0, 2**16),
)
def test_conversion_is_bayes_and_inverts(k, length, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, length, k, generator=gen, dtype=torch.float64) * 3
    z = torch.randint(k, (1, length), generator=gen)
    sigma = torch.tensor([-math.log(alpha)], dtype=torch.float64)
    post = posterior_from_x_hat(logits, z, sigma, k)
    expected = _bayes_posterior(torch.softmax(logits, -1), z[0], alpha, k)
    torch.testing.assert_close(post.exp(), expected, rtol=1e-10, atol=1e-12)
    back = x_hat_from_posterior(post, z, sigma.expand(1, length), k)
    torch.testing.assert_close(back, torch.log_softmax(logits, -1), rtol=1e-9, atol=1e-9)


def test_the_shift_at_the_issue_figure_and_near_alpha_one():
    sigma = torch.tensor([math.log(2.0), 1e-12], dtype=torch.float64)
    shift = evidence_shift(sigma, 262_144)
    assert abs(shift[0].item() - math.log1p(262_144)) < 1e-12  # K alpha / (1 - alpha) = K at 1/2
    assert abs(shift[0].item() - 12.476) < 1e-3
    # alpha = exp(-1e-12): 1 - alpha ~ 1e-12, the shift ~ log(K / 1e-12), finite and exact
    assert abs(shift[1].item() - math.log(262_144 / 1e-12)) < 1e-6


# ---------------------------------------------------------------------------------------------
# The two parameterizations wired through: a posterior-trained toy and its x_hat twin
# ---------------------------------------------------------------------------------------------

F64 = torch.float64


class PosteriorOracle:
    """The cross-entropy-optimal uniform-state denoiser of an explicit joint law: the Bayes
    posterior p(x^l | z_t), every position's own evidence included, by enumeration over K^L
    (independent of the conversion under test). Declares ``parameterization = "posterior"``."""

    parameterization = "posterior"
    reads_token_levels = True

    def __init__(self, law: torch.Tensor):
        self.oracle = UniformOracle(law)

    def probs(self, z, alpha_t, clean=None):
        o = self.oracle
        alpha_t = torch.as_tensor(alpha_t, dtype=F64).expand(z.shape[0])
        weight = o.law.reshape(1, -1) * o.likelihood(z, alpha_t, clean).prod(-1)  # (B, S)
        post = torch.einsum("bs,slk->blk", weight, o.onehot)
        return post / post.sum(-1, keepdim=True)

    def __call__(self, z_t, sigma):
        clean = None
        if sigma.ndim == 2:
            clean, sigma = sigma == 0, sigma.amax(-1)
        return self.probs(z_t, torch.exp(-sigma.to(F64)), clean).log()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_converted_optimal_posterior_is_the_optimal_x_hat_to_1e_12():
    law = random_law(3, 3, seed=4)
    z = all_sequences(3, 3)
    post, x_hat = PosteriorOracle(law), UniformOracle(law)
    worst = 0.0
    for a in (0.02, 0.5, 0.97):
        sigma = torch.full((len(z),), -math.log(a), dtype=F64)
        got = x_hat_from_posterior(post.probs(z, a).log(), z, sigma, 3).exp()
        worst = max(worst, (got - x_hat.probs(z, a)).abs().max().item())
        # and back: the optimal x_hat converted is the Bayes posterior
        back = posterior_from_x_hat(x_hat.probs(z, a).log(), z, sigma, 3).exp()
        worst = max(worst, (back - post.probs(z, a)).abs().max().item())
    assert worst < 1e-12, worst
    # per-token levels: clean positions (sigma = 0) stay as they are, the others convert
    clean = torch.zeros(len(z), 3, dtype=torch.bool)
    clean[:, 0] = True
    sigma = torch.full(clean.shape, -math.log(0.5), dtype=F64).masked_fill(clean, 0.0)
    logits = post.probs(z, 0.5, clean).log()
    got = convert_logits(logits, z, sigma, source="posterior", target="x_hat")
    assert torch.equal(got[:, 0], logits[:, 0])
    expected = x_hat.probs(z, 0.5, clean)[:, 1:]
    assert (got[:, 1:].exp() - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize(
    "options",
    [{"tail": "none"}, {"tail": "greedy"}, {"tail": "map"}, {"kappa": 0.5, "tail": "none"},
     {"top_k": 2}],
)  # fmt: skip
def test_sampling_a_posterior_model_draws_the_tokens_of_its_x_hat_twin(options):
    law = random_law(3, 3, seed=5)
    post, x_hat = PosteriorOracle(law), UniformOracle(law)
    kw = {"schedule": LogLinearSchedule(), "vocab_size": 3, "seed": 11, **options}
    twins = sample_uniform(post, 300, 3, 6, **kw), sample_uniform(x_hat, 300, 3, 6, **kw)
    assert torch.equal(*twins)
    # a prompt: clean context at sigma = 0, held as it is
    prompt = torch.randint(0, 3, (300, 3), generator=_gen(1))
    mask = torch.zeros(300, 3, dtype=torch.bool)
    mask[:, 1] = True
    kw.update(prompt=prompt, prompt_mask=mask)
    twins = sample_uniform(post, 300, 3, 6, **kw), sample_uniform(x_hat, 300, 3, 6, **kw)
    assert torch.equal(*twins)


def test_sampling_a_posterior_model_follows_the_exact_law_of_its_x_hat_twin():
    law = random_law(3, 2, seed=6)
    grid = TimeGrid.build(LogLinearSchedule(), 8, tail="none")
    exact = uniform_chain(UniformOracle(law), grid)  # the x_hat sampler's law, by enumeration
    x = sample_uniform(PosteriorOracle(law), 6000, 2, 8, schedule=LogLinearSchedule(),
                       vocab_size=3, tail="none", generator=_gen(2))  # fmt: skip
    assert chi_square_p(sequence_ids(x, 3), exact) > 1e-4
    # ... and reading the posterior as x_hat (no declaration) is measurably another law
    undeclared = lambda z, sigma: PosteriorOracle(law)(z, sigma)
    y = sample_uniform(undeclared, 6000, 2, 8, schedule=LogLinearSchedule(), vocab_size=3,
                       tail="none", generator=_gen(3))  # fmt: skip
    assert chi_square_p(sequence_ids(y, 3), exact) < 1e-6


def test_the_nelbo_and_dcd_read_a_posterior_model_as_its_x_hat_twin():
    law = random_law(3, 3, seed=7)
    post, x_hat = PosteriorOracle(law), UniformOracle(law)
    x_0 = all_sequences(3, 3).repeat(4, 1)
    t = torch.rand(len(x_0), generator=_gen(4)) * 0.98 + 0.01
    clean = torch.rand(x_0.shape, generator=_gen(5)) < 0.3
    clean[:, 2] = False
    diffusion = UniformDiffusion(3)
    for kw in ({}, {"clean_mask": clean}):
        a = diffusion.nelbo(post, x_0, t=t, generator=_gen(6), **kw)
        b = diffusion.nelbo(x_hat, x_0, t=t, generator=_gen(6), **kw)
        torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=1e-6)
        la = diffusion.loss(post, x_0, t=t, generator=_gen(7), **kw)
        lb = diffusion.loss(x_hat, x_0, t=t, generator=_gen(7), **kw)
        torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    # The denoisers see sigma in float32 and the conversion uses it in float64: 1e-7 apart.
    kw = {"window": GammaSchedule(-4.0, -1.0), "kl_dtype": F64}
    da = DCDistiller(post, 3, **kw).loss(post, x_0, generator=_gen(8))
    db = DCDistiller(x_hat, 3, **kw).loss(x_hat, x_0, generator=_gen(8))
    torch.testing.assert_close(da, db, rtol=1e-4, atol=1e-6)
    assert da.abs().sum() > 0  # teacher (z_s, s) and student (z_t, t) do differ


def test_the_cross_entropy_objective_trains_the_posterior_and_is_not_the_nelbo():
    law = random_law(3, 3, seed=8)
    post, x_hat = PosteriorOracle(law), UniformOracle(law)
    x_0 = all_sequences(3, 3).repeat(40, 1)
    t = torch.rand(len(x_0), generator=_gen(9)) * 0.98 + 0.01
    ce = UniformDiffusion(3, objective="cross_entropy")
    a = ce.loss(post, x_0, t=t, generator=_gen(10))
    # an x_hat model is trained through the posterior it implies: the same loss at the optimum
    torch.testing.assert_close(a, ce.loss(x_hat, x_0, t=t, generator=_gen(10)), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    # it is -log p(x_0 | z_t) of the Bayes posterior, recomputed here from the same z_t
    alpha = LogLinearSchedule().alpha(t.to(torch.float32)).to(F64)
    z_t = uniform_corrupt(x_0, alpha.to(torch.float32)[:, None], 3, generator=_gen(10))
    bayes = -post.probs(z_t, alpha).log().gather(-1, x_0[..., None]).squeeze(-1)
    torch.testing.assert_close(a.double(), bayes, rtol=1e-4, atol=1e-5)
    # the posterior is its minimiser: the x_hat law declared a posterior scores worse
    mislabelled = as_denoiser(x_hat, parameterization="posterior")
    assert a.mean() < ce.loss(mislabelled, x_0, t=t, generator=_gen(10)).mean() - 0.05
    # not the NELBO: another number on the same draws
    nelbo = UniformDiffusion(3).loss(post, x_0, t=t, generator=_gen(10))
    assert (nelbo - a).abs().max() > 0.1
    with pytest.raises(ValueError, match="objective must be 'nelbo'"):
        UniformDiffusion(3, objective="ce")


def _report() -> None:  # pragma: no cover - run by hand
    """The figures of the parameterizations: the README guide's glue lines per recipe, the
    conversion's error on the exact oracles, and the posterior model against its x_hat twin."""
    from tests.test_adapters import GLUE, _recipes

    for model, recipe in GLUE:
        print(f"glue lines  {model:4s} / {recipe:24s}: {len(_recipes('byo-' + model)[recipe])}")
    law, z = random_law(3, 3, seed=4), all_sequences(3, 3)
    post, x_hat = PosteriorOracle(law), UniformOracle(law)
    for a in (0.02, 0.5, 0.97):
        sigma = torch.full((len(z),), -math.log(a), dtype=F64)
        got = x_hat_from_posterior(post.probs(z, a).log(), z, sigma, 3).exp()
        print(f"alpha_t={a}: max |converted optimal posterior - optimal x_hat| = "
              f"{(got - x_hat.probs(z, a)).abs().max().item():.2e}")  # fmt: skip
    law = random_law(3, 3, seed=5)
    for options in ({"tail": "none"}, {"tail": "greedy"}, {"tail": "map"},
                    {"kappa": 0.5, "tail": "none"}):  # fmt: skip
        kw = dict(schedule=LogLinearSchedule(), vocab_size=3, seed=11, **options)
        a = sample_uniform(PosteriorOracle(law), 300, 3, 6, **kw)
        b = sample_uniform(UniformOracle(law), 300, 3, 6, **kw)
        print(f"{options}: posterior model vs x_hat twin, 300 x 3 tokens, 6 steps, seed 11: "
              f"equal = {torch.equal(a, b)}")  # fmt: skip


if __name__ == "__main__":
    _report()
