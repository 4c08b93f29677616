"""Classifier-free guidance for discrete diffusion (Schiff et al. 2024, "Simple Guidance
Mechanisms for Discrete Diffusion Models").

One denoiser trained with its condition dropped at random gives a conditional prediction
(logits_c, with the caller's ``cond``) and an unconditional one (logits_u, with ``uncond``).
The guided reverse transition of each token is the geometric mixture

    q_gamma(z_s = j) ∝ q(z_s = j | z_t, y)^gamma · q(z_s = j | z_t)^(1 - gamma),

renormalised over j: gamma = 1 is the conditional sampler, gamma = 0 the unconditional one,
gamma > 1 sharpens towards the condition. Unlike an unguided step it is not a three-part
mixture, so each chunk of rows builds both transitions over the K classes (a chunk at a time,
never (B, L, K)) and draws exactly from their renormalised geometric mixture.

For the masked process both transitions keep an unmasked token and give a masked one the mask
with the same probability 1 - p, so the guided law of a masked token is: stay masked with
weight 1 - p, unmask to j with weight p x_c[j]^gamma x_u[j]^(1 - gamma).

With top-k / nucleus filtering the two laws can share no class (nuclei that do not overlap):
the geometric mixture is then empty. Such a token follows the conditional law alone (gamma = 1)
at that step, in the steps and in the tails alike (``discdiff.samplers.tails``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff.samplers import levels as lv
from discdiff.samplers.categorical import (
    ChunkLaw,
    Source,
    block_size,
    row_chunks,
    softmax_weights,
    uniforms,
)
from discdiff.samplers.psi import uniform_mixture
from discdiff.samplers.steps import unmask_probability
from discdiff.samplers.tails import guided_log_weights

__all__ = ["guided_logits", "guided_masked_step", "guided_uniform_step"]


def guided_logits(logits_c: Tensor, logits_u: Tensor, gamma: float) -> Tensor:
    """log of the guided x_hat ∝ x_c^gamma x_u^(1 - gamma), unnormalised, (B, L, K).

    What the tails take their argmax / mode of under guidance.
    """
    dtype = torch.float64 if torch.float64 in (logits_c.dtype, logits_u.dtype) else torch.float32
    c = torch.log_softmax(logits_c, -1, dtype=dtype)  # no separate full-size dtype copy
    u = torch.log_softmax(logits_u, -1, dtype=dtype)
    # A class impossible under either side stays impossible (and (-inf) * 0 is never formed);
    # disjoint supports fall back to the conditional side.
    return guided_log_weights(c, u, gamma)


def _transition_log(
    w: Tensor,
    law: ChunkLaw,
    z: Tensor,
    a_s: float | Tensor,
    a_t: float | Tensor,
    kappa: float | Tensor | None,
    k: int,
) -> Tensor:
    """log q(z_s = j) (n, K) of the (Ψ) step for a chunk, from x_hat weights ``w`` (n, K)."""
    x_hat = w.to(torch.float64) / law.total.unsqueeze(-1)
    x_zt = x_hat.gather(1, z.unsqueeze(-1)).squeeze(-1)
    p_stay, p_xhat = uniform_mixture(x_zt, a_s, a_t, kappa, k)
    p_unif = (1 - p_stay - p_xhat).clamp_min(0.0)
    q = p_xhat.unsqueeze(-1) * x_hat + (p_unif / k).unsqueeze(-1)
    q = q.scatter_add(1, z.unsqueeze(-1), p_stay.unsqueeze(-1))
    return torch.log(q)


def guided_uniform_step(
    logits_c: Tensor,
    logits_u: Tensor,
    z_t: Tensor,
    alpha_s: float | Tensor,
    alpha_t: float | Tensor,
    gamma: float,
    *,
    kappa: float | Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Source = None,
) -> Tensor:
    """One guided reverse step of the uniform-state process (the Ψ step when ``kappa`` is set).

    ``logits_c`` / ``logits_u`` (B, L, K) are the conditional and unconditional predictions;
    levels are floats or flattened float64 (B*L,) tensors (``UniformStep``'s trusted inputs).
    Each token's transition is q_c^gamma q_u^(1 - gamma), renormalised, drawn exactly (float64 law).
    Randomness: two float64 uniforms per token (a generator's or a ``RowStream``'s).
    """
    b, ln, k = logits_c.shape
    device = logits_c.device
    n = b * ln
    flat_c, flat_u = logits_c.reshape(n, k), logits_u.reshape(n, k)
    z_flat = z_t.reshape(n)
    u_block, u_within = uniforms(n, generator, device), uniforms(n, generator, device)
    z_s = torch.empty_like(z_flat)
    block = block_size(k)
    for sl in row_chunks(n, k, device):
        z = z_flat[sl]
        kap = None if kappa is None else lv.rows(kappa, sl)
        a_s, a_t = lv.rows(alpha_s, sl), lv.rows(alpha_t, sl)
        logs = []
        for flat in (flat_c, flat_u):
            w = softmax_weights(flat[sl], exclude=None, top_k=top_k, top_p=top_p)
            logs.append(_transition_log(w, ChunkLaw.of(w, block, "logits"), z, a_s, a_t, kap, k))
        log_q = guided_log_weights(logs[0], logs[1], gamma)
        weights = torch.exp(log_q - log_q.amax(-1, keepdim=True))
        law = ChunkLaw.of(weights, block, "the guided transition")
        local = torch.arange(weights.shape[0], device=device)
        z_s[sl] = law.draw(local, u_block[sl], u_within[sl])
    return z_s.reshape(b, ln)


def guided_masked_step(
    logits_c: Tensor,
    logits_u: Tensor,
    z_t: Tensor,
    alpha_s: float | Tensor,
    alpha_t: float | Tensor,
    gamma: float,
    *,
    mask_id: int,
    sigma: float | Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Source = None,
) -> Tensor:
    """One guided reverse step of the masked process (optional ReMDM remasking ``sigma``).

    A masked token unmasks with probability p S / (1 - p + p S), S = sum_j x_c^gamma x_u^(1-gamma),
    drawing from x_c^gamma x_u^(1 - gamma) (mask class excluded); unmasked tokens behave as in
    the unguided step (both predictions agree on them). A token whose two filtered laws share no
    class follows the conditional one (module docstring). Randomness: three float64 uniforms per
    token (a generator's or a ``RowStream``'s).
    """
    b, ln, k = logits_c.shape
    device = logits_c.device
    n = b * ln
    flat_c, flat_u = logits_c.reshape(n, k), logits_u.reshape(n, k)
    z_flat = z_t.reshape(n)
    u = uniforms(n, generator, device)
    u_block, u_within = uniforms(n, generator, device), uniforms(n, generator, device)
    p = unmask_probability(alpha_s, alpha_t, 0.0 if sigma is None else sigma, device)
    p = p.expand(n) if p.ndim == 0 else p
    masked = z_flat == mask_id
    z_s = z_flat.clone()
    if sigma is not None:
        z_s = torch.where(~masked & (u < sigma), mask_id, z_s)
    block = block_size(k)
    for sl in row_chunks(n, k, device):
        logs = []
        for flat in (flat_c, flat_u):
            w = softmax_weights(flat[sl], exclude=mask_id, top_k=top_k, top_p=top_p)
            total = w.sum(-1, keepdim=True, dtype=torch.float64)
            logs.append(torch.log(w.to(torch.float64) / total))
        log_g = guided_log_weights(logs[0], logs[1], gamma)  # log x_c^gamma x_u^(1-gamma)
        top = log_g.amax(-1, keepdim=True)
        weights = torch.exp(log_g - top)
        law = ChunkLaw.of(weights, block, "the guided prediction")
        log_s = top.squeeze(-1) + torch.log(law.total)  # log S, S = sum_j x_c^g x_u^(1-g)
        ps = p[sl]
        # p S / (1 - p + p S) = sigmoid(log p + log S - log(1 - p)), stable for any gamma
        p_unmask = torch.sigmoid(torch.log(ps) + log_s - torch.log1p(-ps))
        unmask = masked[sl] & (u[sl] < p_unmask)
        local = torch.arange(weights.shape[0], device=device)
        drawn = law.draw(local, u_block[sl], u_within[sl])
        z_s[sl] = torch.where(unmask, drawn, z_s[sl])
    return z_s.reshape(b, ln)
