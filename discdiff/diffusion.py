"""The diffusion objects: a schedule, a forward process and a loss around any denoiser.

``UniformDiffusion`` is Duo: uniform-state discrete diffusion, optionally trained first with the
Gaussian curriculum (relaxed argmax latents; Concepts §4), then on the plain discrete process.
``MaskedDiffusion`` is MDLM (absorbing state, SUBS parameterisation), the usual baseline.

Notation: ``x_0`` clean tokens (B, L); ``z_t`` noisy tokens; ``alpha_t`` the discrete signal level;
``dalpha_dt`` its time derivative; ``sigma = -log(alpha_t)`` the noise level handed to the
denoiser, shape (B,).

Every training loss (these and the distillers') is ``loss(denoiser, x_0, step=0, *, ...,
mask=None, reduction="none")``: ``mask`` (B, L) True at the tokens that count, ``reduction``
"none" (per token, 0 at ignored ones), "sum" or "mean" over the tokens that count. A denoiser
that offers ``discdiff.denoise.FusedHead`` (the DiT) may have its loss computed from its last
hidden state and output projection (``discdiff.losses.fused``), never holding the (B, L, K)
logits, equal to the logits' loss to rounding: ``fused=None`` where it pays
(``discdiff.losses.dispatch``; ask for ``reduction="mean"``, not ``loss(...).mean()``, so that it
can), True / False force either. The validation bounds (``nelbo``) always take the logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discdiff import config, losses, processes, samplers
from discdiff.checks import check_generator, check_schedule, check_x0
from discdiff.context import check_clean_mask, hold_clean, require_token_levels, token_levels
from discdiff.curriculum import GaussianCurriculum
from discdiff.denoise import Head, denoise, denoise_head, noise_level
from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.losses._common import Reduction, check_mask, check_reduction, reduce_loss
from discdiff.losses.dispatch import use_fused_head
from discdiff.schedules import LogLinearSchedule, Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import (
    Bag,
    Denoiser,
    as_float,
    check_count,
    check_range,
    check_vocab_size,
    trusted,
)

__all__ = ["NELBO", "GaussianCurriculum", "MaskedDiffusion", "UniformDiffusion"]


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

    def mean(self, mask: Tensor | None = None) -> Tensor:
        """The bound per token, ``total`` averaged over the tokens where ``mask`` (B, L) is True
        (all without one), 0-d; exp of it bounds the perplexity of this batch."""
        check_mask(mask, self.diffusion.shape)
        return reduce_loss(self.total, mask, "mean")

    terms = (
        "diffusion (continuous time, t in [eps, 1]) + prior KL at t = 1 + reconstruction at t = eps"
    )


def _column(x: Tensor) -> Tensor:
    return x.unsqueeze(-1)  # (B,) -> (B, 1): broadcasts over the sequence


def _check_x0(x_0: Any, vocab_size: int) -> Tensor:
    """The one check of the clean tokens on a public call; the layers below trust them. Any
    integer dtype in, int64 out (what the processes and the denoiser get)."""
    return check_x0(x_0, vocab_size)


def _check_schedule(schedule: Any) -> Schedule:
    """A schedule object (alpha(t), dalpha_dt(t)), e.g. ``LogLinearSchedule()``; not a name.
    The same rule as the samplers' (``discdiff.checks.check_schedule``)."""
    return check_schedule(schedule)


def _draw_times(
    x_0: Tensor, eps: float, t: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    check_generator(generator)
    if t is None:
        # Antithetic over this batch; for data-parallel training pass t from
        # discdiff.timesteps.AntitheticTimes (stratified over the global batch).
        return antithetic_times(x_0.shape[0], eps=eps, generator=generator, device=x_0.device)
    if not isinstance(t, Tensor) or t.shape != (x_0.shape[0],):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must have shape (B,) = ({x_0.shape[0]},), got {got}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"t must hold float times in [0, 1], got dtype {t.dtype}")
    check_range(t, "t", 0.0, 1.0)
    return t.to(x_0.device)


def _check_step(step: Any) -> int:
    return check_count(step, "step", minimum=0)


def _check_eps(eps: Any) -> float:
    eps = as_float(eps, "eps")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    return eps


def _loss_options(
    denoiser: Any, x_0: Tensor, fused: bool | None, mask: Tensor | None, reduction: Any,
    clean_mask: Tensor | None,
) -> dict[str, Any]:  # fmt: skip
    """The checked options of a uniform loss; clean positions leave the loss's ``mask``."""
    check_mask(mask, x_0.shape)
    options = {"fused": fused, "mask": mask, "reduction": check_reduction(reduction)}
    if clean_mask is not None:
        check_clean_mask(clean_mask, x_0.shape)
        require_token_levels(denoiser, "clean_mask", "or train without clean context")
        clean = clean_mask.to(x_0.device)
        options["mask"] = ~clean if mask is None else mask & ~clean
        options["clean"] = clean
    return options


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
        if curriculum is not None and not isinstance(curriculum, GaussianCurriculum):
            kind = type(curriculum).__name__
            raise TypeError(f"curriculum must be a GaussianCurriculum or None, got {kind}")
        self.vocab_size = vocab_size
        self.eps = _check_eps(eps)
        self.schedule: Schedule = (
            _check_schedule(schedule) if schedule is not None else LogLinearSchedule(eps)
        )
        self.curriculum = curriculum
        self.curriculum_schedule: DualSchedule | None = None
        if curriculum is not None:
            self.curriculum_schedule = DualSchedule(
                curriculum.gamma_window(vocab_size), GaussianArgmaxTransform(vocab_size)
            )

    def __repr__(self) -> str:
        return (
            f"UniformDiffusion(vocab_size={self.vocab_size}, schedule={self.schedule!r}, "
            f"curriculum={self.curriculum!r}, eps={self.eps!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings with the schedule and curriculum nested: ``{"type":
        "UniformDiffusion", "vocab_size": K, "schedule": {"type": "LogLinearSchedule", ...},
        "curriculum": {...} or None, "eps": ...}`` (see ``discdiff.config``)."""
        return {
            "type": "UniformDiffusion",
            "vocab_size": self.vocab_size,
            "schedule": config.encode(self.schedule),
            "curriculum": config.encode(self.curriculum),
            "eps": self.eps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UniformDiffusion:
        """The diffusion ``to_dict`` describes."""
        fields = config.check_keys(cls, data, {"vocab_size", "schedule", "curriculum", "eps"})
        return cls(**{k: config.decode(v) for k, v in fields.items()})

    def _denoise(
        self, denoiser: Denoiser, z_t: Any, alpha_t: Tensor, cond: Mapping[str, Any] | None,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        sigma = token_levels(noise_level(alpha_t, alpha_t.shape[0], alpha_t.device), clean)
        return denoise(denoiser, z_t, sigma, vocab_size=self.vocab_size, cond=cond)

    def _denoise_head(
        self, denoiser: Any, z_t: Any, alpha_t: Tensor, cond: Mapping[str, Any] | None,
        clean: Tensor | None = None,
    ) -> Head:  # fmt: skip
        sigma = token_levels(noise_level(alpha_t, alpha_t.shape[0], alpha_t.device), clean)
        return denoise_head(denoiser, z_t, sigma, vocab_size=self.vocab_size, cond=cond)

    def _nelbo_of(
        self, denoiser: Denoiser, z_in: Any, x_0: Tensor, z_t: Tensor, alpha_t: Tensor,
        dalpha_dt: Tensor, cond: Mapping[str, Any] | None, fused: bool | None,
        mask: Tensor | None, reduction: Reduction, clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The uniform NELBO of the denoiser's output at ``z_in`` (tokens, or the curriculum's
        relaxed input), fused with its output layer where ``use_fused_head`` says so. ``clean``
        positions are seen at level 0 (``mask`` already leaves them out)."""
        kw: dict[str, Any] = {"mask": mask, "reduction": reduction}
        if use_fused_head(denoiser, fused, x_0.numel(), self.vocab_size, x_0.device, reduction):
            head = self._denoise_head(denoiser, z_in, alpha_t, cond, clean)
            return losses.fused_linear_uniform_nelbo(
                head.hidden, head.weight, x_0, z_t, alpha_t, dalpha_dt, bias=head.bias, **kw
            )
        logits = self._denoise(denoiser, z_in, alpha_t, cond, clean)
        return losses.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt, **kw)

    def loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        step: int = 0,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        fused: bool | None = None,
        mask: Tensor | None = None,
        reduction: Reduction = "none",
        clean_mask: Tensor | None = None,
    ) -> Tensor:
        """The training loss at training step ``step``: per token (B, L), or reduced (0-d).

        Uses the curriculum while it is active, the discrete process otherwise. ``t`` (B,) fixes
        the times; by default they are antithetic over the batch (``AntitheticTimes`` makes
        them antithetic over a data-parallel global batch). ``cond`` is the denoiser's keyword
        conditioning. ``mask`` (B, L) bool, True at the tokens that count (None: all);
        ``reduction`` "none" (0 at ignored tokens), "sum" or "mean" over the tokens that count.
        ``fused``: None picks the path by ``discdiff.losses.dispatch``'s rule; True computes the
        loss from the denoiser's hidden state and output projection when it offers them
        (``FusedHead``), never holding the logits; False from its logits.

        ``clean_mask`` (B, L) bool: positions held clean as context (a prompt, the sides of a
        gap to fill): z_t = x_0 there, seen by the denoiser at level 0 (per-token levels: the
        denoiser must declare ``reads_token_levels``), and no loss there. A model trained with
        such rows (``discdiff.context.random_clean_mask``) samples prompts exactly.
        """
        x_0 = _check_x0(x_0, self.vocab_size)
        step = _check_step(step)
        t = _draw_times(x_0, self.eps, t, generator)
        kw = _loss_options(denoiser, x_0, fused, mask, reduction, clean_mask)
        with trusted():  # checked at the door: the layers below trust their inputs
            if self.curriculum is not None and self.curriculum.active(step):
                return self._curriculum_loss(denoiser, x_0, t, step, generator, cond, **kw)
            return self._discrete_loss(denoiser, x_0, t, generator, cond, **kw)

    def discrete_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        fused: bool | None = None,
        mask: Tensor | None = None,
        reduction: Reduction = "none",
        clean_mask: Tensor | None = None,
    ) -> Tensor:
        """The continuous-time uniform NELBO integrand at times ``t`` (B,), per token (B, L) or
        reduced; ``fused``, ``mask``, ``reduction`` and ``clean_mask`` as in ``loss``."""
        x_0 = _check_x0(x_0, self.vocab_size)
        t = _draw_times(x_0, self.eps, t, generator)
        kw = _loss_options(denoiser, x_0, fused, mask, reduction, clean_mask)
        with trusted():
            return self._discrete_loss(denoiser, x_0, t, generator, cond, **kw)

    def _discrete_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        generator: torch.Generator | None,
        cond: Mapping[str, Any] | None,
        **kw: Any,  # fused, mask, reduction, clean
    ) -> Tensor:
        t = t.to(torch.promote_types(t.dtype, torch.float32))
        alpha_t = _column(self.schedule.alpha(t))
        dalpha_dt = _column(self.schedule.dalpha_dt(t))
        z_t = processes.uniform_corrupt(x_0, alpha_t, self.vocab_size, generator=generator)
        if kw.get("clean") is not None:
            z_t = torch.where(kw["clean"], x_0, z_t)
        return self._nelbo_of(denoiser, z_t, x_0, z_t, alpha_t, dalpha_dt, cond, **kw)

    def _curriculum_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        step: int,
        generator: torch.Generator | None,
        cond: Mapping[str, Any] | None,
        **kw: Any,  # fused, mask, reduction, clean
    ) -> Tensor:
        assert self.curriculum is not None and self.curriculum_schedule is not None
        schedule, tau = self.curriculum_schedule, self.curriculum.tau_at(step)
        t = t.to(torch.float32)
        alpha_tilde = _column(schedule.alpha_tilde(t))
        alpha_t = _column(schedule.alpha(t))
        dalpha_dt = _column(schedule.dalpha_dt(t))
        dtype = self.curriculum.input_dtype(denoiser)  # the soft input's dtype: the model's
        if self.curriculum.top_k is None:
            latent = processes.gaussian_latent(
                x_0, alpha_tilde, self.vocab_size, generator=generator
            )
            relaxed: Any = processes.relax(latent.w_t, tau).to(dtype)
            z_t = latent.z_t
        else:
            bag = processes.topk_gaussian_latent(
                x_0, alpha_tilde, self.vocab_size, self.curriculum.top_k, tau, generator=generator
            )
            relaxed, z_t = Bag(bag.ids, bag.weights.to(dtype)), bag.z_t
        if kw.get("clean") is not None:  # clean context: the token itself, exactly
            relaxed, z_t = hold_clean(relaxed, z_t, x_0, kw["clean"], self.vocab_size)
        return self._nelbo_of(denoiser, relaxed, x_0, z_t, alpha_t, dalpha_dt, cond, **kw)

    @torch.no_grad()
    def nelbo(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
    ) -> NELBO:
        """A validation bound on -log p(x_0) per token, always on the discrete process.

        One Monte Carlo sample of t per sequence (antithetic over the batch); average over a
        validation set for the bound ``exp(sum(total) / n_tokens)`` on perplexity
        (``discdiff.metrics`` reduces it across ranks).
        """
        x_0 = _check_x0(x_0, self.vocab_size)
        t = _draw_times(x_0, self.eps, t, generator)
        with trusted():
            # t ~ U[eps, 1], so the integral over [eps, 1] is (1 - eps) times the mean integrand.
            diffusion = (1 - self.eps) * self._discrete_loss(
                denoiser, x_0, t, generator, cond, fused=False, mask=None, reduction="none"
            )
            one = torch.ones(x_0.shape[0], 1, device=x_0.device)
            prior = losses.uniform_prior_kl(x_0, self.schedule.alpha(one), self.vocab_size)
            alpha_eps = self.schedule.alpha(one * self.eps)
            z_eps = processes.uniform_corrupt(x_0, alpha_eps, self.vocab_size, generator=generator)
            logits = self._denoise(denoiser, z_eps, alpha_eps, cond)
            reconstruction = losses.uniform_reconstruction(logits, x_0, z_eps, alpha_eps)
        return NELBO(diffusion.float(), prior.float(), reconstruction.float())

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **options: Any,
    ) -> Tensor:
        """Sample in ``steps`` steps on this diffusion's schedule: ``discdiff.samplers.
        sample_uniform``'s options (tail, kappa, top_k, top_p, time_grid, prompt, prompt_mask,
        cond, callback, progress, generator, seed, device); an unknown option is a TypeError.
        ``seed=`` (an int) draws each row's randomness from a stream keyed by (seed, row)."""
        return samplers.sample_uniform(
            denoiser, batch_size, length, steps, schedule=self.schedule,
            vocab_size=self.vocab_size, **options,
        )  # fmt: skip


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
        self.time_conditioned = bool(time_conditioned)
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.model_vocab_size = vocab_size + 1
        self.eps = _check_eps(eps)
        self.schedule: Schedule = (
            _check_schedule(schedule) if schedule is not None else LogLinearSchedule(eps)
        )

    def __repr__(self) -> str:
        return (
            f"MaskedDiffusion(vocab_size={self.vocab_size}, schedule={self.schedule!r}, "
            f"eps={self.eps!r}, time_conditioned={self.time_conditioned})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings with the schedule nested: ``{"type": "MaskedDiffusion",
        "vocab_size": K, "schedule": {...}, "eps": ..., "time_conditioned": ...}``."""
        return {
            "type": "MaskedDiffusion",
            "vocab_size": self.vocab_size,
            "schedule": config.encode(self.schedule),
            "eps": self.eps,
            "time_conditioned": self.time_conditioned,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaskedDiffusion:
        """The diffusion ``to_dict`` describes."""
        known = {"vocab_size", "schedule", "eps", "time_conditioned"}
        fields = config.check_keys(cls, data, known)
        return cls(**{k: config.decode(v) for k, v in fields.items()})

    def _denoise(
        self, denoiser: Denoiser, z_t: Tensor, alpha_t: Tensor, cond: Mapping[str, Any] | None
    ) -> Tensor:
        sigma = noise_level(alpha_t if self.time_conditioned else 1.0, z_t.shape[0], z_t.device)
        return denoise(denoiser, z_t, sigma, vocab_size=self.model_vocab_size, cond=cond)

    def _denoise_head(
        self, denoiser: Any, z_t: Tensor, alpha_t: Tensor, cond: Mapping[str, Any] | None
    ) -> Head:
        sigma = noise_level(alpha_t if self.time_conditioned else 1.0, z_t.shape[0], z_t.device)
        return denoise_head(denoiser, z_t, sigma, vocab_size=self.model_vocab_size, cond=cond)

    def loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        step: int = 0,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        fused: bool | None = None,
        mask: Tensor | None = None,
        reduction: Reduction = "none",
    ) -> Tensor:
        """The continuous-time masked NELBO integrand per token (B, L), or reduced (0-d);
        ``step`` (>= 0) does not change it. Arguments as in ``UniformDiffusion.loss``
        (``mask``: the tokens that count, not the mask token)."""
        x_0 = _check_x0(x_0, self.vocab_size)
        _check_step(step)
        t = _draw_times(x_0, self.eps, t, generator)
        check_mask(mask, x_0.shape)
        kw = {"fused": fused, "mask": mask, "reduction": check_reduction(reduction)}
        with trusted():
            return self._loss(denoiser, x_0, t, generator, cond, **kw)

    def _loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        generator: torch.Generator | None,
        cond: Mapping[str, Any] | None,
        fused: bool | None,
        mask: Tensor | None,
        reduction: Reduction,
    ) -> Tensor:
        alpha_t = _column(self.schedule.alpha(t))
        dalpha_dt = _column(self.schedule.dalpha_dt(t))
        z_t = processes.masked_corrupt(x_0, alpha_t, self.mask_id, generator=generator)
        kw: dict[str, Any] = {"mask": mask, "reduction": reduction}
        k = self.model_vocab_size
        if use_fused_head(denoiser, fused, x_0.numel(), k, x_0.device, reduction):
            head = self._denoise_head(denoiser, z_t, alpha_t, cond)
            return losses.fused_linear_masked_nelbo(
                head.hidden, head.weight, x_0, z_t, alpha_t, dalpha_dt, self.mask_id,
                bias=head.bias, **kw,
            )  # fmt: skip
        logits = self._denoise(denoiser, z_t, alpha_t, cond)
        return losses.masked_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt, self.mask_id, **kw)

    @torch.no_grad()
    def nelbo(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
    ) -> NELBO:
        """A validation bound on -log p(x_0) per token (see ``NELBO``)."""
        x_0 = _check_x0(x_0, self.vocab_size)
        t = _draw_times(x_0, self.eps, t, generator)
        with trusted():
            diffusion = (1 - self.eps) * self._loss(
                denoiser, x_0, t, generator, cond, fused=False, mask=None, reduction="none"
            )
            one = torch.ones(x_0.shape[0], 1, device=x_0.device)
            prior = losses.masked_prior_kl(x_0, self.schedule.alpha(one), self.model_vocab_size)
            alpha_eps = self.schedule.alpha(one * self.eps)
            z_eps = processes.masked_corrupt(x_0, alpha_eps, self.mask_id, generator=generator)
            logits = self._denoise(denoiser, z_eps, alpha_eps, cond)
            reconstruction = losses.masked_reconstruction(logits, x_0, z_eps, self.mask_id)
        return NELBO(diffusion.float(), prior.float(), reconstruction.float())

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **options: Any,
    ) -> Tensor:
        """Sample in ``steps`` steps on this diffusion's schedule: ``discdiff.samplers.
        sample_masked``'s options (tail, cache, remask, top_k, top_p, time_grid, prompt,
        prompt_mask, cond, callback, progress, generator, seed, device); an unknown option is a
        TypeError. ``seed=`` (an int) draws each row's randomness from a stream keyed by
        (seed, row)."""
        return samplers.sample_masked(
            denoiser, batch_size, length, steps, schedule=self.schedule,
            vocab_size=self.model_vocab_size, mask_id=self.mask_id,
            time_conditioned=self.time_conditioned, **options,
        )  # fmt: skip
