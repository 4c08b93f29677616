"""The x_hat <-> posterior conversion (SPEC §11) against Bayes' rule with explicit matrices."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discdiff.parameterization import evidence_shift, posterior_from_x_hat, x_hat_from_posterior


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
