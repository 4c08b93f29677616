"""The terms that close the variational bound, and the autoregressive loss.

Which terms make a true upper bound on -log p(x)
-----------------------------------------------
For the uniform-state process with a schedule α_t on t in [ε, 1]::

    -log p(x) <=  E_{q(z_ε|x)}[ uniform_reconstruction ]          (t = ε: -log p_θ(x | z_ε))
               +  ∫_ε^1 E_{q(z_t|x)}[ uniform_nelbo ] dt           (the diffusion part)
               +  uniform_prior_kl(x, α_1)                         (t = 1: KL(q(z_1|x) ‖ Uniform))

All three are needed for a true bound; each is >= 0. The integrand is the continuous-time limit
of the discrete sum Σ E KL(q(z_s|z_t,x) ‖ p_θ(z_s|z_t)) over a time grid, p_θ the Concepts §5
posterior with x̂ for x; each discrete sum plus the prior term bounds -log p(x) of its ancestral
sampler, and the integral does the same for the continuous-time reverse process (their limit).
The reconstruction term is the sum's last step ε -> 0: its decoder is the model's reverse
posterior at α_0 = 1 (see ``uniform_reconstruction``). A Monte-Carlo estimate of the integral
with t ~ U[ε, 1] is (1 - ε) · uniform_nelbo at a sampled t. If the schedule reaches α = 1 at
t = 0 and the integral starts there, the reconstruction term is absorbed into the integral.
Checked in tests/test_losses.py on a K = 3, L = 1 data law with the denoiser that makes the
reverse process exact: the full bound exceeds -Σ p log p by exactly KL(q(z_1) ‖ Uniform)
(1.9e-7 nats for p = (0.6, 0.3, 0.1), α_1 = 1e-3, any ε). Validation perplexities that report
only the diffusion part (as the reference code does) omit the prior and reconstruction terms,
which are small (α_1 ≈ 0, α_ε ≈ 1) but positive.

The masked (absorbing) process has the same three parts with ``masked_reconstruction`` and
``masked_prior_kl``; because the all-mask prior has no mass on clean tokens, the prior used when
α_1 > 0 is (1 - α_1)·δ_mask + α_1·Uniform(non-mask tokens), which makes the prior term
α_1 · log(K - 1) (zero when α_1 = 0) and keeps the bound finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from discdiff.losses._common import (
    Reduction,
    accumulation_dtype,
    check_common,
    check_mask,
    check_mask_id,
    check_reduction,
    g,
    log_prob_without_mask,
    per_token,
    prior_dtype,
    reduce_loss,
    result_dtype,
)
from discdiff.typing import Level, check_range, check_tokens, check_vocab_size, typechecked

__all__ = [
    "ar_loss",
    "masked_prior_kl",
    "masked_reconstruction",
    "posterior_cross_entropy",
    "uniform_prior_kl",
    "uniform_reconstruction",
]


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    b, length, k = logits.shape
    out_dtype = result_dtype(logits)
    nll = F.cross_entropy(
        logits.reshape(b * length, k).to(out_dtype), targets.reshape(b * length), reduction="none"
    )
    return nll.view(b, length)


@typechecked
def ar_loss(logits: Float[Tensor, "b l k"], targets: Int[Tensor, "b l"]) -> Float[Tensor, "b l"]:
    """Next-token cross-entropy per token, -log softmax(logits)[targets], shape (B, L).

    ``targets`` must already be shifted by the caller: ``logits[:, j]`` is the prediction for
    ``targets[:, j]`` (typically ``targets = x[:, 1:]`` and ``logits = model(x[:, :-1])``).
    """
    check_common(logits, targets, None, x_name="targets")
    return _nll(logits, targets)


@typechecked
def posterior_cross_entropy(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    *,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """Cross-entropy -log softmax(logits)[x_0] per token, the objective of a uniform-state model
    whose logits are the posterior p(x_0^l | z_t) (``UniformDiffusion(K, objective=
    "cross_entropy")``; SPEC §11). NOT a bound on -log p(x): it is unweighted in t and its
    optimum is the Bayes posterior, which the exact conversion turns into the NELBO's optimal
    x_hat (``discdiff.parameterization``). Validate such a model with the NELBO.

    ``mask`` / ``reduction`` as in ``uniform_nelbo``.
    """
    check_common(logits, x_0, None)
    check_mask(mask, x_0.shape)
    check_reduction(reduction)
    return reduce_loss(_nll(logits, x_0), mask, reduction)


@typechecked
def uniform_reconstruction(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_eps: Int[Tensor, "b l"],
    alpha_eps: Level,
) -> Float[Tensor, "b l"]:
    """Reconstruction term -log p_θ(x_0 | z_ε) of the uniform-state bound, per token.

    The decoder is the model's own last reverse step ε -> 0, the reverse posterior (Concepts §5)
    with α_0 = 1:

        p_θ(x_0 = j | z_ε = i) = x̂_j (α_ε δ_ij + (1 - α_ε)/K) / (α_ε x̂_i + (1 - α_ε)/K)

    with x̂ = softmax(logits) the denoiser's output at (z_ε, ε). This is the decoder that makes
    the bound tight: with an exact denoiser, integral + reconstruction + prior exceeds -log p(x)
    only by KL(q(z_1) ‖ Uniform). (Using x̂ itself as the decoder is also a valid bound, but a
    loose one: the x̂ that makes the reverse process exact is not the posterior p(x_0 | z_ε).)
    Add E_{q(z_ε|x)} of this to the integral of ``uniform_nelbo`` over [ε, 1] and the prior term.
    A position with z_ε ≠ x_0 at α_ε = 1 is impossible and gives +inf.
    """
    k = check_common(logits, x_0, z_eps, "z_eps")
    check_range(alpha_eps, "alpha_eps", 0.0, 1.0, open_lo=True)
    out_dtype = result_dtype(logits, alpha_eps)
    work = logits.to(out_dtype)
    lse = torch.logsumexp(work, dim=-1)
    log_x = work.gather(-1, x_0.unsqueeze(-1)).squeeze(-1) - lse
    log_i = work.gather(-1, z_eps.unsqueeze(-1)).squeeze(-1) - lse
    alpha = per_token(alpha_eps, x_0.shape, logits, out_dtype)
    log_c = torch.log((1 - alpha) / k)
    log_forward = torch.where(z_eps == x_0, torch.logaddexp(torch.log(alpha), log_c), log_c)
    log_norm = torch.logaddexp(torch.log(alpha) + log_i, log_c)
    return -(log_x + log_forward - log_norm)


@typechecked
def masked_reconstruction(
    logits: Float[Tensor, "b l k"],
    x_0: Int[Tensor, "b l"],
    z_eps: Int[Tensor, "b l"],
    mask_id: int,
) -> Float[Tensor, "b l"]:
    """Reconstruction term -log p_θ(x_0 | z_ε) of the masked bound, per token.

    Unmasked positions are copied (SUBS), so their term is 0; masked ones use the denoiser's x̂ at
    (z_ε, ε) with the mask logit excluded.
    """
    k = check_common(logits, x_0, z_eps, "z_eps")
    check_mask_id(mask_id, k, x_0)
    log_p = log_prob_without_mask(logits, x_0, mask_id).to(result_dtype(logits))
    return torch.where(z_eps == mask_id, -log_p, 0.0)


@typechecked
def uniform_prior_kl(
    x_0: Int[Tensor, "b l"], alpha_1: Level, vocab_size: int
) -> Float[Tensor, "b l"]:
    """KL(q(z_1 | x_0) ‖ Uniform(K)) per token, in closed form.

    q(z_1 | x) puts (1 + (K-1) α_1)/K on x and (1 - α_1)/K elsewhere, so the KL is
    ((1 + (K-1)α)/K) log(1 + (K-1)α) + ((K-1)(1-α)/K) log(1 - α). Same for every token; returned
    as (B, L) (float64 when alpha_1 is a float64 tensor).
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_1, "alpha_1", 0.0, 1.0)
    out_dtype = prior_dtype(alpha_1)
    acc = accumulation_dtype(x_0.device)
    a = torch.as_tensor(alpha_1, dtype=acc, device=x_0.device)
    k = float(vocab_size)
    # With m = (K-1)α and log1p(z) = z - g(z), the O(α) parts cancel exactly:
    # K · KL = m² + (K-1)α² - (1 + m) g(m) - (K-1)(1-α) g(-α) >= 0, accurate for tiny α.
    below = a < 1
    a_safe = torch.where(below, a, 0.0)
    m = (k - 1) * a_safe
    kl = (
        m * m + (k - 1) * a_safe * a_safe - (1 + m) * g(m) - (k - 1) * (1 - a_safe) * g(-a_safe)
    ) / k
    kl = torch.where(below, kl, math.log(vocab_size))  # α = 1: q is one-hot, KL = log K
    return kl.clamp_min(0.0).to(out_dtype).expand(x_0.shape).clone()


@typechecked
def masked_prior_kl(
    x_0: Int[Tensor, "b l"], alpha_1: Level, vocab_size: int
) -> Float[Tensor, "b l"]:
    """Prior term of the masked bound per token: α_1 · log(K - 1).

    The exact all-mask prior gives +inf whenever α_1 > 0 (q(z_1|x) keeps mass α_1 on x). The prior
    used here is (1 - α_1) δ_mask + α_1 Uniform(the K - 1 non-mask tokens): the all-mask prior
    when α_1 = 0, and KL(q(z_1|x) ‖ prior) = α_1 log(K - 1) otherwise. K = ``vocab_size`` counts
    the mask token.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_1, "alpha_1", 0.0, 1.0)
    out_dtype = prior_dtype(alpha_1)
    a = torch.as_tensor(alpha_1, dtype=out_dtype, device=x_0.device)
    return (a * math.log(vocab_size - 1)).expand(x_0.shape).clone()
