"""The reverse-process laws as the paper writes them: explicit (B, L, K) probabilities.

These are the reference implementations (Concepts §5): readable, in the promoted dtype of the inputs
(float64 in, float64 out), and they materialise (B, L, K) tensors. The one-step kernels in
``discdiff.samplers.steps`` never build them; the tests check those kernels' laws against these.

Notation: K vocabulary size, i = z_t, x_hat = the denoiser's estimate of the clean token (rows
summing to one), alpha_s >= alpha_t the signal levels at s < t, alpha_ts = alpha_t / alpha_s.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.samplers.levels import Level, check_ordered, level
from discdiff.typing import check_tokens, checks_enabled, reject_if, typechecked

__all__ = ["denoising_posterior", "psi_posterior", "uniform_posterior"]


def _expand_k(a: Tensor, b: int, ln: int) -> Tensor:
    return a.expand(b, ln).unsqueeze(-1) if a.ndim == 2 else a


@typechecked
def uniform_posterior(
    probs_x0: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
) -> Float[Tensor, "b l k"]:
    """q(z_s | z_t, x_hat) of the uniform-state process, as (B, L, K) probabilities (Concepts §5).

    ``probs_x0`` is x_hat (B, L, K), rows summing to one; ``alpha_s >= alpha_t`` are floats or
    tensors broadcastable as (B, 1) / (B, L). Computed in the promoted dtype of the inputs
    (float64 in, float64 out). This is the explicit reference; the samplers never build it.

    With alpha_ts = alpha_t / alpha_s (1 when alpha_s = 0: no time elapses),

        q(z_s | z_t, x_hat) = [K alpha_t x_hat[z_t] e_{z_t} + (alpha_ts - alpha_t) e_{z_t}
                               + (alpha_s - alpha_t) x_hat + (1 - alpha_ts)(1 - alpha_s) / K]
                              / [K alpha_t x_hat[z_t] + 1 - alpha_t].
    """
    b, ln, k = probs_x0.shape
    check_tokens(z_t, k, "z_t")
    a_s = level(alpha_s, b, ln, "alpha_s", probs_x0)
    a_t = level(alpha_t, b, ln, "alpha_t", probs_x0)
    check_ordered(a_s, a_t)
    dtype = torch.result_type(probs_x0, a_s)
    dtype = torch.promote_types(dtype, torch.result_type(probs_x0, a_t))
    probs = probs_x0.to(dtype)
    a_s = torch.as_tensor(a_s, dtype=dtype, device=probs.device)
    a_t = torch.as_tensor(a_t, dtype=dtype, device=probs.device)
    a_s, a_t = _expand_k(a_s, b, ln), _expand_k(a_t, b, ln)  # (B, L, 1)
    a_ts = torch.where(a_s > 0, a_t / a_s.clamp_min(torch.finfo(dtype).tiny), torch.ones_like(a_t))
    index = z_t.unsqueeze(-1)
    x_zt = probs.gather(-1, index)  # (B, L, 1)
    stay = k * a_t * x_zt + a_ts - a_t
    num = (a_s - a_t) * probs + (1 - a_ts) * (1 - a_s) / k
    num = num.scatter_add(-1, index, stay.expand_as(x_zt))
    den = k * a_t * x_zt + 1 - a_t
    if checks_enabled():
        reject_if(
            den <= 0,
            "z_t has zero probability under probs_x0 at alpha_t = 1: the posterior is undefined",
        )
    return num / den


@typechecked
def denoising_posterior(
    probs_x0: Float[Tensor, "b l k"], z_t: Int[Tensor, "b l"], alpha_t: Level
) -> Float[Tensor, "b l k"]:
    """q(z_0 = j | z_t = i, x_hat) ∝ (alpha_t [j = i] + (1 - alpha_t) / K) x_hat_j, (B, L, K).

    The posterior of the clean token: x_hat is the leave-one-out law p(x | z_t^{-l}) (what the
    uniform NELBO trains it to be), and the token's own evidence enters through the forward
    probability of z_t. It is ``uniform_posterior`` at alpha_s = 1.
    """
    return uniform_posterior(probs_x0, z_t, 1.0, alpha_t)


@typechecked
def psi_posterior(
    probs_x0: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
    kappa: Level,
) -> Float[Tensor, "b l k"]:
    """The Ψ-sampler's transition kappa q(z_s | z_t, x_hat) + (1 - kappa) forward(q0, alpha_s).

    forward(q0, alpha_s) = alpha_s q0 + (1 - alpha_s) / K re-noises the denoising posterior
    q0 = q(z_0 | z_t, x_hat) to level s (Concepts §5). kappa = 1 is the ancestral step.
    """
    b, ln, k = probs_x0.shape
    post = uniform_posterior(probs_x0, z_t, alpha_s, alpha_t)
    q0 = denoising_posterior(probs_x0, z_t, alpha_t)
    dtype = post.dtype
    a_s = _expand_k(torch.as_tensor(level(alpha_s, b, ln, "alpha_s", post), dtype=dtype), b, ln)
    kap = _expand_k(torch.as_tensor(level(kappa, b, ln, "kappa", post), dtype=dtype), b, ln)
    return kap * post + (1 - kap) * (a_s * q0 + (1 - a_s) / k)
