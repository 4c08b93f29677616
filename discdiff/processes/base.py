"""The ``Process`` interface: a forward process on token ids and the per-token terms of its NELBO.

A process knows how to corrupt clean tokens (``corrupt``), its prior at t = 1 (``prior``: the KL
of q(z_1 | x_0) to it; ``draw_prior``: a draw from it), what noise level the denoiser sees
(``levels``), and the per-token pieces of its bound (``diffusion_loss``, ``reconstruction``).
From these the base class builds, once for every process, the NELBO of ``UniformDiffusion`` /
``MaskedDiffusion`` and its conditional form given clean positions (``nelbo``,
``diffusion_term``, ``endpoint_terms``). A new process is a module of ``discdiff.processes``
with a ``Process`` subclass implementing the abstract methods.

The conditional bound. Write x = (c, y): c the positions held clean (``clean`` True), y the
others. The forward process corrupts only y; the denoiser sees c as it is (for the uniform
process, at level sigma = 0 there: a uniform-state token looks the same clean or noised); every
term is 0 at c. The usual variational argument goes through unchanged (each reverse kernel is
the posterior at *some* x_hat, whatever the denoiser saw), so

    -log p_theta(y | c) <= (1 - eps) E_{t ~ U[eps, 1]} E_{q(y_t | y)} sum_{l in y} loss_t
                           + sum_{l in y} KL(q(y_1 | y) || prior) + E -log p_theta(y | y_eps, c),

the bound that prompt-conditioned sampling (SPEC §5, §9) draws from. Without ``clean`` it is the
unconditional NELBO on -log p(x_0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from discdiff.denoise import Head, denoise, denoise_head
from discdiff.losses._common import Reduction, check_mask, reduce_loss
from discdiff.losses.dispatch import use_fused_head
from discdiff.objective import Bound
from discdiff.schedules import Schedule
from discdiff.typing import Denoiser

__all__ = ["NELBO", "Process"]

_Cond = Mapping[str, Any] | None


@dataclass(frozen=True)
class NELBO:
    """An upper bound on -log p(x_0), per token (B, L), split into its terms.

    ``diffusion`` is a one-sample Monte Carlo estimate of the continuous-time loss integrated over
    t in [eps, 1]; ``prior`` is KL(q(z_1 | x_0) || prior); ``reconstruction`` is
    -log p_theta(x_0 | z_eps). ``total`` is their sum. Given clean positions (a conditional
    bound), every term is 0 there.
    """

    diffusion: Tensor
    prior: Tensor
    reconstruction: Tensor

    @property
    def total(self) -> Tensor:
        return self.diffusion + self.prior + self.reconstruction

    def mean(self, mask: Tensor | None = None) -> Tensor:
        """The bound per token, ``total`` averaged over the tokens where ``mask`` (B, L) is True
        (all without one), 0-d; exp of it bounds the perplexity of this batch."""
        check_mask(mask, self.diffusion.shape)
        return reduce_loss(self.total, mask, "mean")

    terms = (
        "diffusion (continuous time, t in [eps, 1]) + prior KL at t = 1 + reconstruction at t = eps"
    )

    def bound(self, mask: Tensor | None = None) -> Bound:
        """The ``Bound`` of the training loop (``discdiff.objective``): ``total`` and the three
        terms by name; ``mask`` (B, L) True at the tokens that count."""
        check_mask(mask, self.diffusion.shape)
        terms = {"diffusion": self.diffusion, "prior": self.prior,
                 "reconstruction": self.reconstruction}  # fmt: skip
        return Bound(self.total, terms, self.terms, mask)


def column(x: Tensor) -> Tensor:
    """(B,) -> (B, 1): a level per sequence that broadcasts over the positions."""
    return x.unsqueeze(-1)


class Process(ABC):
    """A forward process on token ids and the per-token terms of its NELBO.

    Attributes:
        vocab_size: K, the number of data token ids.
        model_vocab_size: the number of logits the denoiser returns (K, or K + 1 with a mask id).
        name: the process's short name ("uniform", "masked").
        needs_token_levels: whether clean positions must be told to the denoiser by per-token
            noise levels (True for the uniform process, whose clean and noised tokens look alike).
    """

    name: ClassVar[str]
    vocab_size: int
    model_vocab_size: int
    needs_token_levels: bool

    # --- what each process defines ---------------------------------------------------------------

    @abstractmethod
    def corrupt(
        self, x_0: Tensor, alpha_t: Tensor, *, generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """z_t ~ q(z_t | x_0) at signal level ``alpha_t`` (B, 1) or (B, L), shape (B, L); x_0
        itself where ``clean`` (B, L) is True (the draws are the same either way)."""

    @abstractmethod
    def prior(self, x_0: Tensor, alpha_1: Tensor) -> Tensor:
        """KL(q(z_1 | x_0) || prior) per token (B, L), ``alpha_1`` the level at t = 1 (B, 1)."""

    @abstractmethod
    def draw_prior(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """Token ids of the given shape drawn from the prior (what t = 1 looks like)."""

    @abstractmethod
    def levels(
        self, alpha_t: Tensor, batch_size: int, device: torch.device, clean: Tensor | None = None
    ) -> Tensor:
        """The noise level sigma the denoiser sees at ``alpha_t``: (B,), or (B, L) with 0 at
        ``clean`` positions where the process tells clean context by per-token levels."""

    @abstractmethod
    def diffusion_loss(
        self, logits: Tensor, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        """The continuous-time NELBO integrand from the denoiser's logits (B, L, K'), per token
        (B, L) (0 where ``mask`` is False) or reduced."""

    @abstractmethod
    def fused_diffusion_loss(
        self, head: Head, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        """``diffusion_loss`` from the denoiser's last hidden state and output projection,
        never holding the logits (``discdiff.losses.fused``)."""

    @abstractmethod
    def reconstruction(
        self, logits: Tensor, x_0: Tensor, z_eps: Tensor, alpha_eps: Tensor
    ) -> Tensor:
        """-log p_theta(x_0 | z_eps) per token (B, L) from the logits at t = eps."""

    def check_data(self, x_0: Tensor) -> Tensor:
        """``x_0`` if it may be clean data of this process (checked once, at the door)."""
        return x_0

    # --- built on them, once for every process ---------------------------------------------------

    def logits(
        self, denoiser: Denoiser, z_t: Any, alpha_t: Tensor, cond: _Cond,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The denoiser's checked logits (B, L, K') at ``z_t`` (ids, soft input or a bag)."""
        sigma = self.levels(alpha_t, alpha_t.shape[0], alpha_t.device, clean)
        return denoise(denoiser, z_t, sigma, vocab_size=self.model_vocab_size, cond=cond)

    def x_hat_logits(
        self, denoiser: Denoiser, logits: Tensor, z_t: Tensor, alpha_t: Tensor,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The logits the bound's terms expect, from the denoiser's at the ids ``z_t``: the
        logits themselves unless the process must convert what they mean (the uniform process
        converts a "posterior" denoiser's, ``discdiff.parameterization``)."""
        return logits

    def converts(self, denoiser: Denoiser) -> bool:
        """Whether ``x_hat_logits`` changes this denoiser's logits (then no fused head)."""
        return False

    def integrand(
        self, denoiser: Denoiser, z_in: Any, x_0: Tensor, z_t: Tensor, alpha_t: Tensor,
        dalpha_t: Tensor, cond: _Cond, *, fused: bool | None, mask: Tensor | None,
        reduction: Reduction, clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The NELBO integrand of the denoiser's output at ``z_in`` (``z_t``, or the curriculum's
        relaxed input whose argmax is ``z_t``), fused with its output layer where
        ``use_fused_head`` says so. ``clean`` positions are seen as context (``mask`` should
        leave them out)."""
        kw: dict[str, Any] = {"mask": mask, "reduction": reduction}
        k = self.model_vocab_size
        fusable = not self.converts(denoiser)  # a fused head never holds logits to convert
        if fusable and use_fused_head(denoiser, fused, x_0.numel(), k, x_0.device, reduction):
            sigma = self.levels(alpha_t, alpha_t.shape[0], alpha_t.device, clean)
            head = denoise_head(denoiser, z_in, sigma, vocab_size=k, cond=cond)
            return self.fused_diffusion_loss(head, x_0, z_t, alpha_t, dalpha_t, **kw)
        logits = self.logits(denoiser, z_in, alpha_t, cond, clean)
        logits = self.x_hat_logits(denoiser, logits, z_t, alpha_t, clean)
        return self.diffusion_loss(logits, x_0, z_t, alpha_t, dalpha_t, **kw)

    def diffusion_term(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, schedule: Schedule, eps: float, *,
        generator: torch.Generator | None = None, cond: _Cond = None, clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """(1 - eps) times the integrand at times ``t`` (B,): one Monte Carlo sample of the
        integral over [eps, 1] per sequence, per token (B, L) float32, 0 at ``clean``."""
        t = t.to(device=x_0.device, dtype=torch.promote_types(t.dtype, torch.float32))
        alpha_t = column(schedule.alpha(t))
        dalpha_t = column(schedule.dalpha_dt(t))
        z_t = self.corrupt(x_0, alpha_t, generator=generator, clean=clean)
        loss = self.integrand(
            denoiser, z_t, x_0, z_t, alpha_t, dalpha_t, cond, fused=False,
            mask=None if clean is None else ~clean, reduction="none", clean=clean,
        )  # fmt: skip
        # t ~ U[eps, 1], so the integral over [eps, 1] is (1 - eps) times the mean integrand.
        return ((1 - eps) * loss).float()

    def endpoint_terms(
        self, denoiser: Denoiser, x_0: Tensor, schedule: Schedule, eps: float, *,
        generator: torch.Generator | None = None, cond: _Cond = None, clean: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The prior KL at t = 1 (exact) and the reconstruction at t = eps (one draw), per token
        (B, L) float32 each, 0 at ``clean``."""
        one = torch.ones(x_0.shape[0], 1, device=x_0.device)
        prior = self.prior(x_0, schedule.alpha(one)).float()
        alpha_eps = schedule.alpha(one * eps)
        z_eps = self.corrupt(x_0, alpha_eps, generator=generator, clean=clean)
        logits = self.logits(denoiser, z_eps, alpha_eps, cond, clean)
        logits = self.x_hat_logits(denoiser, logits, z_eps, alpha_eps, clean)
        reconstruction = self.reconstruction(logits, x_0, z_eps, alpha_eps).float()
        if clean is not None:
            prior = prior.masked_fill(clean, 0)
            reconstruction = reconstruction.masked_fill(clean, 0)
        return prior, reconstruction

    def nelbo(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, schedule: Schedule, eps: float, *,
        generator: torch.Generator | None = None, cond: _Cond = None, clean: Tensor | None = None,
    ) -> NELBO:  # fmt: skip
        """The bound on -log p(x_0), or on -log p(x_free | x_clean) given ``clean`` (B, L), per
        token (B, L), its diffusion term at times ``t`` (B,). Trusts its inputs: the public
        door, with the checks, is ``UniformDiffusion.nelbo`` / ``MaskedDiffusion.nelbo``."""
        kw: dict[str, Any] = {"generator": generator, "cond": cond, "clean": clean}
        diffusion = self.diffusion_term(denoiser, x_0, t, schedule, eps, **kw)
        return NELBO(diffusion, *self.endpoint_terms(denoiser, x_0, schedule, eps, **kw))
