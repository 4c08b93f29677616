"""Self-Distillation Through Time (SDTT, Deschenaux & Gulcehre 2024; Concepts §6) for masked models.

Notation: ``x_0`` clean tokens (B, L); K the vocabulary size; the mask token is id K, so the
denoisers (MDLM, SUBS parameterisation) return K + 1 logits and x_hat = softmax over the K data
classes (the mask class removed); t in [0, 1] with signal level alpha_t (default log-linear,
alpha_t = 1 - (1 - 1e-3) t); z_t ~ q(z_t | x_0) keeps each token with probability alpha_t and masks
it otherwise. m is ``teacher_steps``, T ``initial_steps``.

The target. From z_t the teacher takes m small masked ancestral steps of size dt,
t = t_0 > t_1 > ... > t_m with t_i = max(t - i dt, 0), each calling the teacher once at
(z_(t_(i-1)), t_(i-1)) for x_hat_i and unmasking each masked token with probability
(alpha_(t_i) - alpha_(t_(i-1))) / (1 - alpha_(t_(i-1))), drawn from x_hat_i. A position masked in
z_t gets as its target the distribution it was decoded from: x_hat_i if the teacher unmasked it at
step i, and the last prediction x_hat_m if it is still masked after the m steps (the paper's
distillation targets, its Figure 2a; the released code builds the same). The student, in one call
at (z_t, t), is trained to match that target on the masked positions of z_t, with the reverse
KL(p_student || p_target) by default (the divergence the paper found best; its released runs'
``kl-bwd``), or the forward KL. Unmasked positions carry over (SUBS) and get loss 0. With an exact
teacher E[target | z_t] = x_hat(z_t) (the exact reverse process is a martingale), so the forward
KL leaves it a fixed point: what SDTT changes comes from the reverse KL's mode seeking.

Rounds. Round n uses dt = m^n / T: its student learns to take, in one step of size m dt, the m
steps of size dt of its teacher. At the end of each round the student (or its EMA) is copied into
the teacher, so the step the student can take grows by m per round: T / m^(n + 1) sampling steps
after round n. Paper: m = 2, T = 1024, 7 rounds of 10k steps (1024 -> 8 steps), t on [eps, 1],
the teacher refreshed from the student's raw weights (not its EMA). The released code places its
m teacher steps at t, t - m dt / (m - 1), ... (``linspace(1, 0, m)`` over [t, t - m dt], each step
of size dt): for m = 2 the second step runs from t - 2 dt to t - 3 dt, leaving a gap. Here the
steps are contiguous, t -> t - dt -> ... -> t - m dt: the m teacher steps cover exactly the
student's one step of size m dt.

The distilled student samples with the ordinary masked sampler (``SDTTDistiller.sample``) on the
same schedule, in T / m^n_rounds steps or more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from discdiff import processes
from discdiff.checks import check_schedule
from discdiff.denoise import denoise, noise_level, warn_if_training
from discdiff.diffusion import MaskedDiffusion
from discdiff.distill.base import Distiller, Divergence
from discdiff.samplers import masked_ancestral_step, sample_masked
from discdiff.schedules import LogLinearSchedule, Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import Denoiser, check_count, check_range, check_tokens

__all__ = ["SDTTDistiller", "SDTTTarget"]


@dataclass(frozen=True)
class SDTTTarget:
    """The teacher's side of one SDTT step.

    ``logits`` (B, L, K + 1): per position, the teacher logits its target distribution comes from
    (x_hat of the step that unmasked it, or of the last step; positions unmasked in z_t hold the
    first call's logits, which the loss ignores). ``z_s`` (B, L): the teacher's tokens after its
    m steps, a draw of its m-step sampler from z_t.
    """

    logits: Float[Tensor, "b l k"]
    z_s: Int[Tensor, "b l"]


def _check_masked_output(role: str, denoiser: Denoiser, vocab_size: int) -> Callable[..., Tensor]:
    """The denoiser, refusing K-class output with a pointed message (a uniform-state model)."""

    def call(z_t: Any, sigma: Tensor, **cond: Any) -> Tensor:
        logits = denoiser(z_t, sigma, **cond)
        if isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[-1] == vocab_size:
            raise ValueError(
                f"{role} returned {vocab_size} logits per token, but a masked (MDLM) denoiser "
                f"returns K + 1 = {vocab_size + 1} (the mask id is K = {vocab_size}): SDTT distils "
                "MaskedDiffusion models, not uniform-state ones (use DCDistiller for those)"
            )
        return logits

    return call


class SDTTDistiller(Distiller):
    """Self-distillation through time of an MDLM teacher into a few-step student.

    Args:
        teacher: a trained masked denoiser (``teacher(z_t, sigma, **cond)`` -> logits
            (B, L, K + 1), the mask id K; e.g. one trained with ``MaskedDiffusion(K)``). The
            distiller keeps its own frozen deep copy in ``distiller.teacher`` (no gradients, eval
            mode): the module you pass is never modified. DDP, ``AveragedModel`` and
            ``torch.compile`` wrappers are unwrapped before copying. A teacher that is not an
            ``nn.Module`` is used as is and replaced by a frozen copy of the student at the first
            refresh.
        vocab_size: K, the number of data token ids (the models return K + 1 logits).
        schedule: alpha_t of the masked process (default ``LogLinearSchedule(eps)``, MDLM's).
        time_conditioned: whether the denoisers see the noise level (MDLM's default: no; they get
            sigma = 0), as in ``MaskedDiffusion``.
        teacher_steps: m, the teacher's steps per student step (paper: 2).
        initial_steps: T, the sampling steps of the original teacher (paper: 1024); round n uses
            dt = m^n / T.
        steps_per_round: optimiser steps per round (paper: 10k).
        n_rounds: rounds (paper: 7, from 1024 to 8 sampling steps); m^n_rounds <= T.
        divergence: ``"kl_student_teacher"`` (reverse KL, mode seeking: the paper's best) or
            ``"kl_teacher_student"``.
        refresh_from: at each round boundary the teacher becomes a copy of the ``"student"``
            (the released runs) or of its ``"ema"`` (then pass the EMA to ``maybe_refresh``).
        kl_dtype: torch.float32 or torch.float64, the precision of the KL.
        eps: the smallest training time: t is drawn antithetically on [eps, 1].

    Use, with ``step`` counting distillation steps from 0::

        distiller = SDTTDistiller(teacher, K)
        loss = distiller.loss(student, x_0, step).mean()   # per token (B, L): mask, reduce
        loss.backward(); opt.step()
        distiller.maybe_refresh(step, student)               # True at a round boundary
        x = distiller.sample(student, 16, L, steps=8)

    The loss is 0 on the positions z_t leaves unmasked, so ``.mean()`` weighs each sequence by
    its masked count (the paper averages over masked tokens: the same up to a constant scale).
    Checkpoint ``distiller.state_dict()`` with the student; ``load_state_dict`` on resume
    restores the round and the teacher's weights, so the run continues the same round.
    """

    def __init__(
        self,
        teacher: Denoiser,
        vocab_size: int,
        *,
        schedule: Schedule | None = None,
        time_conditioned: bool = False,
        teacher_steps: int = 2,
        initial_steps: int = 1024,
        steps_per_round: int = 10_000,
        n_rounds: int = 7,
        divergence: Divergence = "kl_student_teacher",
        refresh_from: Literal["student", "ema"] = "student",
        kl_dtype: torch.dtype = torch.float32,
        eps: float = 1e-3,
    ) -> None:
        _check_teacher(teacher)
        self.teacher_steps = check_count(teacher_steps, "teacher_steps", minimum=2)
        super().__init__(
            teacher, vocab_size, initial_steps=check_count(initial_steps, "initial_steps"),
            steps_per_round=steps_per_round, n_rounds=n_rounds, divergence=divergence,
            refresh_from=refresh_from, kl_dtype=kl_dtype, eps=eps,
        )  # fmt: skip
        if self.teacher_steps**self.n_rounds > self.initial_steps:
            raise ValueError(
                f"n_rounds={n_rounds} rounds of teacher_steps={teacher_steps} take the student's "
                f"step to teacher_steps**n_rounds / initial_steps = {teacher_steps}**{n_rounds} / "
                f"{initial_steps} > 1: the last student would step past t = 0; lower n_rounds or "
                "raise initial_steps"
            )
        if not isinstance(time_conditioned, bool):
            raise ValueError(f"time_conditioned must be a bool, got {time_conditioned!r}")
        if schedule is not None:
            check_schedule(schedule)  # the one rule of training and sampling
        self.mask_id = vocab_size
        self.model_vocab_size = vocab_size + 1
        self.schedule: Schedule = schedule if schedule is not None else LogLinearSchedule(eps)
        self.time_conditioned = time_conditioned

    @classmethod
    def from_diffusion(cls, teacher: Denoiser, diffusion: Any, **kwargs: Any) -> SDTTDistiller:
        """The distiller of a teacher trained with ``diffusion`` (a ``MaskedDiffusion``): its
        vocabulary, schedule, eps and time conditioning; ``kwargs`` set the rest."""
        from discdiff.diffusion import MaskedDiffusion

        if not isinstance(diffusion, MaskedDiffusion):
            raise TypeError(
                "diffusion must be a MaskedDiffusion: SDTT distils masked (MDLM) models, got "
                f"{type(diffusion).__name__} (use DCDistiller for uniform-state models)"
            )
        settings = {
            "schedule": diffusion.schedule,
            "time_conditioned": diffusion.time_conditioned,
            "eps": diffusion.eps,
        }
        return cls(teacher, diffusion.vocab_size, **{**settings, **kwargs})

    @property
    def _growth(self) -> int:
        return self.teacher_steps  # round n's teacher step: dt = teacher_steps^n / initial_steps

    def sampling_steps(self, round: int) -> float:
        """The sampling steps the student of round ``round`` is distilled for:
        initial_steps / teacher_steps^(round + 1)."""
        return 1.0 / (self.teacher_steps * self.dt(round))

    # -- the target and the loss ----------------------------------------------------------

    def _alpha(self, t: Tensor) -> Tensor:
        # alpha at t = 0 is exactly 1 (clean), whatever rounding the schedule has there (as the
        # samplers take it): the teacher's last step from t < m dt then unmasks everything.
        alpha = self.schedule.alpha(t.to(torch.float64)).to(torch.float64)
        return torch.where(t > 0, alpha, 1.0)

    def _call(
        self, role: str, denoiser: Any, z: Tensor, alpha: Tensor, cond: Mapping[str, Any] | None
    ) -> Tensor:
        level = alpha if self.time_conditioned else 1.0
        sigma = noise_level(level, z.shape[0], z.device)
        name = self._role(role, denoiser)
        call = _check_masked_output(name, denoiser, self.vocab_size)
        return denoise(call, z, sigma, vocab_size=self.model_vocab_size, cond=cond, role=name)

    @torch.no_grad()
    def target(
        self,
        z_t: Int[Tensor, "b l"],
        t: Float[Tensor, " b"],
        round: int,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
    ) -> SDTTTarget:
        """The teacher's target at (z_t, t) for round ``round``: m masked ancestral steps of size
        dt = dt(round) from z_t (times t_i = max(t - i dt, 0)), each position taking the logits
        of the step that unmasked it, or of the last step if it stays masked (module docstring).

        ``z_t`` holds ids in [0, K] (K = mask); ``t`` (B,) times in [0, 1]. Runs without gradients;
        stops calling the teacher once no token is masked. Randomness from ``generator`` only.
        """
        if z_t.ndim != 2:
            raise ValueError(f"z_t must be (B, L) token ids, got shape {tuple(z_t.shape)}")
        check_tokens(z_t, self.model_vocab_size, "z_t")
        t = torch.as_tensor(t, dtype=torch.float64, device=z_t.device).reshape(-1)
        if t.shape[0] != z_t.shape[0]:
            raise ValueError(f"t must be (B,) = ({z_t.shape[0]},), got {tuple(t.shape)}")
        check_range(t, "t", 0.0, 1.0)
        dt = self.dt(round)
        if isinstance(self.teacher, nn.Module):
            self.teacher.eval()
        z, logits = z_t, None
        target: Tensor | None = None
        for i in range(self.teacher_steps):
            t_now = (t - i * dt).clamp_min(0.0)
            t_next = (t - (i + 1) * dt).clamp_min(0.0)
            alpha_t = self._alpha(t_now).unsqueeze(-1)
            alpha_s = self._alpha(t_next).unsqueeze(-1)
            masked = z == self.mask_id
            if i > 0 and not bool(masked.any()):
                break
            logits = self._call("teacher", self.teacher, z, alpha_t, cond)
            # Every position still masked before step i takes this step's x_hat: those the step
            # unmasks keep it, the others are overwritten by a later step (or keep the last one).
            target = logits if target is None else torch.where(masked.unsqueeze(-1), logits, target)
            z = masked_ancestral_step(
                logits, z, alpha_s, alpha_t, mask_id=self.mask_id, generator=generator
            )
        assert target is not None
        return SDTTTarget(target, z)

    def _token_loss(
        self,
        student: Denoiser,
        x_0: Int[Tensor, "b l"],
        round: int,
        *,
        generator: torch.Generator | None,
        cond: Mapping[str, Any] | None,
        mask: Bool[Tensor, "b l"] | None,
    ) -> Float[Tensor, "b l"]:
        """``loss`` per token (B, L): t (B,) is antithetic over the batch on [eps, 1];
        z_t ~ q(z_t | x_0); the teacher builds its target from z_t (``target``) without
        gradients; the student sees (z_t, t). The KL of ``divergence`` between the student's
        x_hat and the target over the K data classes at the masked positions of z_t (and of
        ``mask``), 0 elsewhere."""
        t = antithetic_times(
            x_0.shape[0],
            eps=self.eps,
            generator=generator,
            device=x_0.device,
            dtype=torch.float64,
        )
        alpha_t = self._alpha(t).unsqueeze(-1)
        z_t = processes.masked_corrupt(x_0, alpha_t, self.mask_id, generator=generator)
        # Teacher first: its activations are freed before the student's are built.
        target = self.target(z_t, t, round, generator=generator, cond=cond).logits
        student_logits = self._call("student", student, z_t, alpha_t, cond)
        # Only the masked rows: SUBS makes the unmasked ones one-hot (infinite KL, NaN gradients).
        counted = z_t == self.mask_id if mask is None else (z_t == self.mask_id) & mask
        rows = counted.reshape(-1).nonzero().squeeze(-1)
        k = self.vocab_size
        p = student_logits.reshape(-1, k + 1)[rows, :k].unsqueeze(0)
        q = target.reshape(-1, k + 1)[rows, :k].unsqueeze(0)
        kl = self._divergence(p, q)
        out = torch.zeros(x_0.numel(), dtype=kl.dtype, device=kl.device)
        return out.index_put((rows,), kl.reshape(-1)).reshape(x_0.shape)

    # -- sampling -------------------------------------------------------------------------

    def student_diffusion(self) -> MaskedDiffusion:
        """The masked diffusion on the distiller's schedule, the student's (``sample``)."""
        return MaskedDiffusion(self.vocab_size, self.schedule, self.eps, self.time_conditioned)

    def sample(
        self, student: Denoiser, batch_size: int, length: int, steps: int, **kwargs: Any
    ) -> Int[Tensor, "b l"]:
        """Sample (batch_size, length) tokens from the student with the masked ancestral sampler
        (``discdiff.samplers.sample_masked``) on the distiller's schedule, mask id and time
        conditioning; ``kwargs`` go to the sampler (``generator`` or ``seed``, tails, ...)."""
        warn_if_training(student, "student")
        return sample_masked(
            student,
            batch_size,
            length,
            steps,
            schedule=self.schedule,
            vocab_size=self.model_vocab_size,
            mask_id=self.mask_id,
            time_conditioned=self.time_conditioned,
            **kwargs,
        )

    # -- checkpoints and settings (``Distiller``) ---------------------------------------------

    def _own_config(self) -> dict[str, Any]:
        return {
            "schedule": repr(self.schedule),
            "time_conditioned": self.time_conditioned,
            "teacher_steps": self.teacher_steps,
        }

    _SETTINGS = ("vocab_size", "schedule", "time_conditioned", "teacher_steps", "initial_steps",
                 "steps_per_round", "n_rounds", "divergence", "refresh_from", "kl_dtype",
                 "eps")  # fmt: skip


def _check_teacher(teacher: Any) -> None:
    from discdiff.diffusion import MaskedDiffusion, UniformDiffusion

    if isinstance(teacher, UniformDiffusion):
        raise TypeError(
            "teacher must be a masked denoiser, got a UniformDiffusion: SDTT distils masked "
            "(MDLM) models; use DCDistiller for uniform-state ones"
        )
    if isinstance(teacher, MaskedDiffusion):
        raise TypeError(
            "teacher must be the denoiser (the network), not the MaskedDiffusion object: use "
            "SDTTDistiller.from_diffusion(teacher, diffusion)"
        )
    if not callable(teacher):
        raise TypeError(f"teacher must be a denoiser (a callable), got {type(teacher).__name__}")
