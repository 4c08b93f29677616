"""The uniform-state process (Duo, UDLM): q(z_t | x) = Cat(alpha_t onehot(x) + (1 - alpha_t) / K).

``x_0`` clean ids (B, L); ``alpha_t`` the signal level in [0, 1], (B, 1) or (B, L); K =
``vocab_size``. The prior at t = 1 is uniform over the K classes. A clean token and a noised one
look alike, so clean context reaches the denoiser as per-token levels, sigma = 0 there
(``discdiff.context``).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff import losses
from discdiff.context import token_levels
from discdiff.denoise import Head, noise_level
from discdiff.losses._common import Reduction
from discdiff.parameterization import convert_logits, parameterization_of
from discdiff.processes._common import LevelTensor, float_dtype, survivors
from discdiff.processes.base import Process
from discdiff.typing import check_range, check_tokens, check_vocab_size, typechecked

__all__ = ["UniformProcess", "uniform_corrupt", "uniform_marginal"]


@typechecked
def uniform_marginal(
    x_0: Int[Tensor, "b l"], alpha_t: LevelTensor, vocab_size: int
) -> Float[Tensor, "b l k"]:
    """q(z_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) / K, shape (B, L, K).

    ``alpha_t`` is (B, 1) or (B, L); the result has its dtype (at least float32).
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_t, "alpha_t", 0.0, 1.0)
    dtype = float_dtype(alpha_t.dtype)
    alpha = alpha_t.to(dtype).expand(x_0.shape)
    probs = ((1 - alpha) / vocab_size).unsqueeze(-1).expand(*x_0.shape, vocab_size).clone()
    return probs.scatter_add_(-1, x_0.long().unsqueeze(-1), alpha.unsqueeze(-1))


@typechecked
def uniform_corrupt(
    x_0: Int[Tensor, "b l"],
    alpha_t: LevelTensor,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "b l"]:
    """Draw z_t ~ q(z_t | x_0) of the uniform-state process, shape (B, L), dtype of ``x_0``.

    Each token survives with probability alpha_t, otherwise it is redrawn uniformly over all K
    classes (so it may land on itself). O(B L) work: no (B, L, K) tensor is built.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_t, "alpha_t", 0.0, 1.0)
    keep = survivors(x_0, alpha_t, generator)
    noise = torch.randint(
        vocab_size, x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype
    )
    return torch.where(keep, x_0, noise)


def _levels_at(alpha_t: Tensor, z_t: Tensor, clean: Tensor | None) -> Tensor:
    """sigma = -log alpha_t per token (B, L), in alpha_t's precision, 0 at ``clean``."""
    sigma = -torch.log(alpha_t).expand(z_t.shape)  # alpha_t (B, 1) or (B, L)
    return sigma if clean is None else sigma.masked_fill(clean, 0.0)


class UniformProcess(Process):
    """The uniform-state process over ``vocab_size`` classes, and the terms of its NELBO
    (``discdiff.losses.uniform_nelbo``, ``uniform_prior_kl``, ``uniform_reconstruction``)."""

    needs_token_levels = True

    name = "uniform"

    def __init__(self, vocab_size: int) -> None:
        check_vocab_size(vocab_size)
        self.vocab_size = self.model_vocab_size = vocab_size

    def __repr__(self) -> str:
        return f"UniformProcess(vocab_size={self.vocab_size})"

    def corrupt(
        self, x_0: Tensor, alpha_t: Tensor, *, generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        z_t = uniform_corrupt(x_0, alpha_t, self.vocab_size, generator=generator)
        return z_t if clean is None else torch.where(clean, x_0, z_t)

    def prior(self, x_0: Tensor, alpha_1: Tensor) -> Tensor:
        return losses.uniform_prior_kl(x_0, alpha_1, self.vocab_size)

    def draw_prior(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        return torch.randint(0, self.vocab_size, shape, generator=generator, device=device)

    def levels(
        self, alpha_t: Tensor, batch_size: int, device: torch.device, clean: Tensor | None = None
    ) -> Tensor:
        return token_levels(noise_level(alpha_t, batch_size, device), clean)

    def converts(self, denoiser: Any) -> bool:
        return parameterization_of(denoiser) != "x_hat"

    def x_hat_logits(
        self, denoiser: Any, logits: Tensor, z_t: Tensor, alpha_t: Tensor,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """x_hat logits: a "posterior" denoiser's converted exactly at sigma = -log alpha_t (in
        alpha_t's precision, per token with 0 at ``clean``), an "x_hat" one's as they are."""
        source = parameterization_of(denoiser)
        if source == "x_hat":
            return logits
        sigma = _levels_at(alpha_t, z_t, clean)
        return convert_logits(logits, z_t, sigma, source=source, target="x_hat")

    def cross_entropy(
        self, denoiser: Any, z_in: Any, x_0: Tensor, z_t: Tensor, alpha_t: Tensor,
        cond: Any, *, mask: Tensor | None, reduction: Reduction, clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """-log p_theta(x_0 | z_t) per token (B, L) or reduced, from the denoiser's output at
        ``z_in`` (``z_t`` or the curriculum's relaxed input): the objective that trains
        posterior logits (``losses.posterior_cross_entropy``, not a bound). An "x_hat"
        denoiser's logits are converted to the posterior they imply first, so either kind
        trains to the same optimum."""
        logits = self.logits(denoiser, z_in, alpha_t, cond, clean)
        posterior = convert_logits(
            logits,
            z_t,
            _levels_at(alpha_t, z_t, clean),
            source=parameterization_of(denoiser),
            target="posterior",
        )
        return losses.posterior_cross_entropy(posterior, x_0, mask=mask, reduction=reduction)

    def diffusion_loss(
        self, logits: Tensor, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        kw = {"mask": mask, "reduction": reduction}
        return losses.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_t, **kw)

    def fused_diffusion_loss(
        self, head: Head, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        return losses.fused_linear_uniform_nelbo(
            head.hidden, head.weight, x_0, z_t, alpha_t, dalpha_t, bias=head.bias, mask=mask,
            reduction=reduction,
        )  # fmt: skip

    def reconstruction(
        self, logits: Tensor, x_0: Tensor, z_eps: Tensor, alpha_eps: Tensor
    ) -> Tensor:
        return losses.uniform_reconstruction(logits, x_0, z_eps, alpha_eps)
