"""What Duo's curriculum buys, measured: the variance of the training gradient with the relaxed
(softmax(w_t / tau)) input vs the discrete input argmax w_t, at the same law of z_t."""

from __future__ import annotations

import torch

from discdiff import losses, processes
from discdiff.duality import DualSchedule
from discdiff.models import DiT

__all__ = ["gradient_variances", "small_dit"]


def small_dit(vocab_size: int, seed: int = 0, logit_scale: float = 1.0) -> DiT:
    """A small DiT (hidden 64, 2 blocks, no dropout) whose zero-initialised layers get random
    weights, so every gradient is live; ``logit_scale`` widens the output logits (20 gives a few
    units of spread, a peaked x_hat like a trained model's). Seeds torch's global generator."""
    torch.manual_seed(seed)
    model = DiT.from_preset(
        "tiny",
        vocab_size=vocab_size,
        hidden_size=64,
        n_blocks=2,
        n_heads=2,
        cond_dim=32,
        dropout=0.0,
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.02)
        model.final.linear.weight.mul_(logit_scale)
    return model


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def gradient_variances(
    model: torch.nn.Module,
    x_0: torch.Tensor,
    t: torch.Tensor,
    schedule: DualSchedule,
    *,
    tau: float,
    draws: int,
    seed: int = 0,
) -> tuple[float, float]:
    """(variance with relaxed input, variance with discrete input), each the mean per-coordinate
    variance of the parameter gradient over ``draws`` latent draws at fixed x_0 (B, L), t (B,).

    Each draw computes the gradient of the uniform NELBO at z_t = argmax w_t twice: feeding
    softmax(w_t / tau) (Duo's curriculum) and feeding the one-hot z_t (the discrete process).
    """
    if draws < 2:
        raise ValueError(f"draws={draws}: a variance needs at least 2 draws")
    vocab_size = schedule.transform.vocab_size
    alpha_tilde = schedule.alpha_tilde(t)[:, None]
    alpha_t = schedule.alpha(t)[:, None]
    dalpha_t = schedule.dalpha_dt(t)[:, None]
    sigma = -torch.log(alpha_t.squeeze(-1))
    generator = torch.Generator().manual_seed(seed)
    grads: dict[str, list[torch.Tensor]] = {"relaxed": [], "discrete": []}
    for _ in range(draws):
        latent = processes.gaussian_latent(x_0, alpha_tilde, vocab_size, generator=generator)
        inputs = {"relaxed": processes.relax(latent.w_t, tau), "discrete": latent.z_t}
        for kind, z in inputs.items():
            model.zero_grad(set_to_none=True)
            logits = model(z, sigma)
            losses.uniform_nelbo(logits, x_0, latent.z_t, alpha_t, dalpha_t).mean().backward()
            grads[kind].append(_flat_grad(model))
    relaxed, discrete = (torch.stack(grads[k]).var(dim=0).mean().item() for k in grads)
    return relaxed, discrete
