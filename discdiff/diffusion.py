"""The diffusion objects: a schedule, a forward process and a loss around any denoiser.

``UniformDiffusion`` is Duo: uniform-state discrete diffusion, optionally trained first with the
Gaussian curriculum (relaxed argmax latents, SPEC §4), then on the plain discrete process.
``MaskedDiffusion`` is MDLM (absorbing state, SUBS parameterisation), the usual baseline.

Notation: ``x_0`` clean tokens (B, L); ``z_t`` noisy tokens; ``alpha_t`` the discrete signal level;
``dalpha_dt`` its time derivative; ``sigma = -log(alpha_t)`` the noise level handed to the
denoiser, shape (B,). Losses are per token, (B, L): callers mask padding and reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discdiff import losses, processes, samplers
from discdiff.denoise import denoise, noise_level
from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.schedules import GammaSchedule, LogLinearSchedule, Schedule
from discdiff.typing import Bag, Denoiser, check_tokens, check_vocab_size

__all__ = ["NELBO", "GaussianCurriculum", "MaskedDiffusion", "UniformDiffusion"]


@dataclass(frozen=True)
class GaussianCurriculum:
    """Duo's first training phase: feed the denoiser relaxed Gaussian latents.

    While ``step < end_step`` the noise level is drawn on the Gaussian window
    gamma in [gamma_min, gamma_max], the latent w_t = alpha_tilde x + sigma_tilde eps is built, the
    denoiser sees softmax(w_t / tau) (or, with ``top_k``, only the top-k entries as an
    (ids, weights) bag), and the loss is the uniform NELBO at z_t = argmax w_t with
    alpha_t = T(alpha_tilde_t) and its exact derivative.

    ``tau`` is the temperature at step 0; with ``tau_end`` set, log10(tau) is annealed linearly to
    log10(tau_end) at ``end_step`` (the released runs keep tau = 1e-3 constant).
    """

    gamma_min: float = -3.55
    gamma_max: float = -1.85
    tau: float = 1e-3
    end_step: int = 500_000
    top_k: int | None = None
    tau_end: float | None = None

    def __post_init__(self) -> None:
        if not self.tau > 0 or (self.tau_end is not None and not self.tau_end > 0):
            raise ValueError(f"tau must be > 0, got tau={self.tau}, tau_end={self.tau_end}")
        if self.end_step < 0:
            raise ValueError(f"end_step must be >= 0, got {self.end_step}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        GammaSchedule(self.gamma_min, self.gamma_max)  # validates the window

    def active(self, step: int) -> bool:
        return step < self.end_step

    def tau_at(self, step: int) -> float:
        if self.tau_end is None or self.end_step == 0:
            return self.tau
        frac = min(max(step / self.end_step, 0.0), 1.0)
        return 10 ** ((1 - frac) * math.log10(self.tau) + frac * math.log10(self.tau_end))


@dataclass(frozen=True)
class NELBO:
    """An upper bound on -log p(x_0), per token (B, L), split into its terms.

    ``diffusion`` is a one-sample Monte Carlo estimate of the continuous-time loss integrated over
    t in [eps, 1]; ``prior`` is KL(q(z_1 | x_0) || prior); ``reconstruction`` is
    -log p_theta(x_0 | z_eps). ``total`` is their sum.
    """

    diffusion: Tensor
    prior: Tensor
    reconstruction: Tensor

    @property
    def total(self) -> Tensor:
        return self.diffusion + self.prior + self.reconstruction

    terms = (
        "diffusion (continuous time, t in [eps, 1]) + prior KL at t = 1 + reconstruction at t = eps"
    )


def _column(x: Tensor) -> Tensor:
    return x.unsqueeze(-1)  # (B,) -> (B, 1): broadcasts over the sequence


def _draw_times(
    x_0: Tensor, eps: float, t: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    if t is None:
        return losses.antithetic_times(
            x_0.shape[0], eps=eps, generator=generator, device=x_0.device
        )
    if t.shape != (x_0.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x_0.shape[0]},), got {tuple(t.shape)}")
    return t.to(x_0.device)


class UniformDiffusion:
    """Duo: uniform-state discrete diffusion with an optional Gaussian curriculum.

    Args:
        vocab_size: K, the number of token ids (the denoiser returns K logits).
        schedule: the discrete schedule alpha_t used after the curriculum and for validation.
        curriculum: a ``GaussianCurriculum`` for the first training phase, or None.
        eps: the smallest time; t is drawn on [eps, 1].
    """

    def __init__(
        self,
        vocab_size: int,
        schedule: Schedule | None = None,
        curriculum: GaussianCurriculum | None = None,
        eps: float = 1e-3,
    ) -> None:
        check_vocab_size(vocab_size)
        self.vocab_size = vocab_size
        self.schedule: Schedule = schedule if schedule is not None else LogLinearSchedule(eps)
        self.curriculum = curriculum
        self.eps = eps
        self.curriculum_schedule: DualSchedule | None = None
        if curriculum is not None:
            self.curriculum_schedule = DualSchedule(
                GammaSchedule(curriculum.gamma_min, curriculum.gamma_max),
                GaussianArgmaxTransform(vocab_size),
            )

    def _denoise(self, denoiser: Denoiser, z_t: Any, alpha_t: Tensor, x_0: Tensor, **cond: Any):
        sigma = noise_level(alpha_t, x_0.shape[0], x_0.device)
        return denoise(denoiser, z_t, sigma, vocab_size=self.vocab_size, cond=cond)

    def loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        step: int = 0,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        """The training loss per token (B, L) at training step ``step``.

        Uses the curriculum while it is active, the discrete process otherwise. ``t`` (B,) fixes
        the times; by default they are antithetic over the batch.
        """
        check_tokens(x_0, self.vocab_size, "x_0")
        t = _draw_times(x_0, self.eps, t, generator)
        if self.curriculum is not None and self.curriculum.active(step):
            return self._curriculum_loss(denoiser, x_0, t, step, generator, **cond)
        return self.discrete_loss(denoiser, x_0, t, generator=generator, **cond)

    def discrete_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        *,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        """The continuous-time uniform NELBO integrand at times ``t`` (B,), per token (B, L)."""
        t = t.to(torch.promote_types(t.dtype, torch.float32))
        alpha_t = _column(self.schedule.alpha(t))
        dalpha_dt = _column(self.schedule.dalpha_dt(t))
        z_t = processes.uniform_corrupt(x_0, alpha_t, self.vocab_size, generator=generator)
        logits = self._denoise(denoiser, z_t, alpha_t, x_0, **cond)
        return losses.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt)

    def _curriculum_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        step: int,
        generator: torch.Generator | None,
        **cond: Any,
    ) -> Tensor:
        assert self.curriculum is not None and self.curriculum_schedule is not None
        schedule, tau = self.curriculum_schedule, self.curriculum.tau_at(step)
        t = t.to(torch.float32)
        alpha_tilde = _column(schedule.alpha_tilde(t))
        alpha_t = _column(schedule.alpha(t))
        dalpha_dt = _column(schedule.dalpha_dt(t))
        if self.curriculum.top_k is None:
            latent = processes.gaussian_latent(
                x_0, alpha_tilde, self.vocab_size, generator=generator
            )
            relaxed: Any = processes.relax(latent.w_t, tau)
            z_t = latent.z_t
        else:
            bag = processes.topk_gaussian_latent(
                x_0, alpha_tilde, self.vocab_size, self.curriculum.top_k, tau, generator=generator
            )
            relaxed, z_t = Bag(bag.ids, bag.weights), bag.z_t
        logits = self._denoise(denoiser, relaxed, alpha_t, x_0, **cond)
        return losses.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt)

    @torch.no_grad()
    def nelbo(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> NELBO:
        """A validation bound on -log p(x_0) per token, always on the discrete process.

        One Monte Carlo sample of t per sequence (antithetic over the batch); average over a
        validation set for the bound ``exp(sum(total) / n_tokens)`` on perplexity.
        """
        check_tokens(x_0, self.vocab_size, "x_0")
        t = _draw_times(x_0, self.eps, t, generator)
        # t ~ U[eps, 1], so the integral over [eps, 1] is (1 - eps) times the mean integrand.
        diffusion = (1 - self.eps) * self.discrete_loss(
            denoiser, x_0, t, generator=generator, **cond
        )
        one = torch.ones(x_0.shape[0], 1, device=x_0.device)
        prior = losses.uniform_prior_kl(x_0, self.schedule.alpha(one), self.vocab_size)
        alpha_eps = self.schedule.alpha(one * self.eps)
        z_eps = processes.uniform_corrupt(x_0, alpha_eps, self.vocab_size, generator=generator)
        logits = self._denoise(denoiser, z_eps, alpha_eps, x_0, **cond)
        reconstruction = losses.uniform_reconstruction(logits, x_0, z_eps, alpha_eps)
        return NELBO(diffusion.float(), prior.float(), reconstruction.float())

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **kwargs: Any,
    ) -> Tensor:
        """Ancestral sampling in ``steps`` steps (see ``discdiff.samplers.sample_uniform`` for the
        options: greedy_tail, top_p, top_k, kappa, time_grid, callback, progress, generator)."""
        return samplers.sample_uniform(
            denoiser,
            batch_size,
            length,
            steps,
            schedule=self.schedule,
            vocab_size=self.vocab_size,
            **kwargs,
        )


class MaskedDiffusion:
    """MDLM: absorbing-state diffusion with the SUBS parameterisation.

    Args:
        vocab_size: K, the number of data token ids. The mask token is id K, so the denoiser
            returns K + 1 logits (``model_vocab_size``); its mask logit is ignored.
        schedule: alpha_t (default log-linear).
        eps: the smallest time.
        time_conditioned: whether the denoiser sees the noise level. MDLM's default is no: the
            denoiser then gets sigma = 0, and the sampler may reuse x_hat while no token changes.
    """

    def __init__(
        self,
        vocab_size: int,
        schedule: Schedule | None = None,
        eps: float = 1e-3,
        time_conditioned: bool = False,
    ):
        check_vocab_size(vocab_size)
        self.time_conditioned = time_conditioned
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.model_vocab_size = vocab_size + 1
        self.schedule: Schedule = schedule if schedule is not None else LogLinearSchedule(eps)
        self.eps = eps

    def _denoise(self, denoiser: Denoiser, z_t: Tensor, alpha_t: Tensor, **cond: Any) -> Tensor:
        sigma = noise_level(alpha_t if self.time_conditioned else 1.0, z_t.shape[0], z_t.device)
        return denoise(denoiser, z_t, sigma, vocab_size=self.model_vocab_size, cond=cond)

    def loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        step: int = 0,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        """The continuous-time masked NELBO integrand per token (B, L); ``step`` is ignored."""
        del step
        check_tokens(x_0, self.vocab_size, "x_0")
        t = _draw_times(x_0, self.eps, t, generator)
        alpha_t = _column(self.schedule.alpha(t))
        dalpha_dt = _column(self.schedule.dalpha_dt(t))
        z_t = processes.masked_corrupt(x_0, alpha_t, self.mask_id, generator=generator)
        logits = self._denoise(denoiser, z_t, alpha_t, **cond)
        return losses.masked_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt, self.mask_id)

    @torch.no_grad()
    def nelbo(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> NELBO:
        """A validation bound on -log p(x_0) per token (see ``NELBO``)."""
        check_tokens(x_0, self.vocab_size, "x_0")
        t = _draw_times(x_0, self.eps, t, generator)
        diffusion = (1 - self.eps) * self.loss(denoiser, x_0, t=t, generator=generator, **cond)
        one = torch.ones(x_0.shape[0], 1, device=x_0.device)
        prior = losses.masked_prior_kl(x_0, self.schedule.alpha(one), self.model_vocab_size)
        alpha_eps = self.schedule.alpha(one * self.eps)
        z_eps = processes.masked_corrupt(x_0, alpha_eps, self.mask_id, generator=generator)
        logits = self._denoise(denoiser, z_eps, alpha_eps, **cond)
        reconstruction = losses.masked_reconstruction(logits, x_0, z_eps, self.mask_id)
        return NELBO(diffusion.float(), prior.float(), reconstruction.float())

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **kwargs: Any,
    ) -> Tensor:
        """Ancestral sampling (see ``discdiff.samplers.sample_masked`` for the options)."""
        return samplers.sample_masked(
            denoiser,
            batch_size,
            length,
            steps,
            schedule=self.schedule,
            vocab_size=self.model_vocab_size,
            mask_id=self.mask_id,
            time_conditioned=self.time_conditioned,
            **kwargs,
        )
