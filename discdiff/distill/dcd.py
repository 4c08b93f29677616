"""Discrete Consistency Distillation (DCD; Concepts §6): few-step generation from a Duo model.

Notation: ``x_0`` clean tokens (B, L); K the vocabulary size; t in [0, 1] the time of the Gaussian
gamma-schedule (gamma linear in t from ``gamma_min`` to ``gamma_max``), with Gaussian signal level
alpha_tilde_t, sigma_tilde_t = sqrt(1 - alpha_tilde_t^2), and discrete signal level
alpha_t = T(alpha_tilde_t) (``GaussianArgmaxTransform``); the denoisers see
sigma = -log(alpha_t), shape (B,).

One distillation step draws, for one shared eps ~ N(0, I_K) per token, the deterministic (DDIM)
pair of Gaussian latents w_t = alpha_tilde_t x + sigma_tilde_t eps and
w_s = alpha_tilde_s x + sigma_tilde_s eps at s = t - dt, maps both through argmax to
(z_t, z_s), runs the student at (z_t, t) and the frozen teacher at (z_s, s), and returns the
per-token KL(p_student || p_teacher) (or the reverse). Only the two argmaxes matter, so the pair
is drawn exactly from three scalars per token (``argmax_pair``): no (B, L, K) noise is drawn.
Training runs in rounds: round n uses dt = 2^n / T; at the end of each round the teacher is
overwritten by the student (or its EMA).
The distilled student samples with the ordinary sampler in few steps (``DCDistiller.sample``),
on a schedule whose alpha_1 matches the uniform prior (log-linear by default, as the reference
samples it): the distillation window's alpha_1 can be far from 0 at a small K.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from discdiff.blocks import check_length, per_token
from discdiff.denoise import denoise, noise_level, warn_if_training
from discdiff.diffusion import UniformDiffusion
from discdiff.distill.base import Distiller, Divergence
from discdiff.duality import AlphaWindow, DualSchedule, GaussianArgmaxTransform
from discdiff.parameterization import convert_logits, parameterization_of
from discdiff.processes.gaussian import argmax_pair
from discdiff.schedules import GammaSchedule, LogLinearSchedule, Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import (
    Denoiser,
    as_float,
    check_count,
    trusted,
)

__all__ = ["PAPER_DCD_WINDOW", "DCDistiller", "argmax_pair"]  # argmax_pair: discdiff.processes

PAPER_DCD_WINDOW = AlphaWindow(0.9986941399953239, 0.006186308465627621)
"""The released run's gamma in [-4, -1] at K = 50257: alpha from 0.9987 to 0.0062
(``AlphaWindow.from_gamma(-4, -1, 50257)``, which the tests check)."""


# ----------------------------------------------------------------------------------------------
# The distiller
# ----------------------------------------------------------------------------------------------


class DCDistiller(Distiller):
    """Discrete Consistency Distillation of a Duo teacher into a few-step student (Concepts §6).

    Args:
        teacher: a trained denoiser (the Denoiser protocol: ``teacher(z_t, sigma, **cond)`` ->
            logits (B, L, K)). The distiller keeps its own frozen deep copy in
            ``distiller.teacher`` (no gradients, eval mode, on the teacher's device): the module
            you pass is never modified. DDP, ``AveragedModel`` and ``torch.compile`` wrappers are
            unwrapped before copying. A teacher that is not an ``nn.Module`` is used as is
            (nothing to copy) and replaced by a frozen copy of the student at the first refresh.
        vocab_size: K; teacher and student must return K logits.
        window: the distillation window: an ``AlphaWindow`` (default: the paper's alpha range,
            mapped to this vocabulary through T) or a ``GammaSchedule`` taken as is. t in
            [0, 1] maps to gamma linear across the window, alpha_tilde^2 = sigmoid(-gamma),
            alpha = T(alpha_tilde). (The paper's gamma in [-4, -1] spans alpha from ~1 to
            0.006 at K = 50257 but only to 0.22 at K = 85: a window in alpha means the same
            for any K.)
        initial_steps: T, the number of steps of the first round's discretisation (paper: 512).
        steps_per_round: optimiser steps per round (paper: 10k).
        n_rounds: rounds; round n uses dt = 2^n / T (paper: 5).
        divergence: ``"kl_student_teacher"`` (the paper's, mode seeking) or
            ``"kl_teacher_student"`` (mass covering).
        refresh_from: at each round boundary the teacher becomes a copy of the ``"student"``
            (the paper's; the released run's) or of its ``"ema"`` weights (then pass the EMA to
            ``maybe_refresh``).
        kl_dtype: torch.float32 or torch.float64, the precision of the KL.
        eps: the smallest time of the teacher's point: t is drawn on [dt + eps, 1], s = t - dt.
        block_size: None, or b for block models (SPEC §10): each block of b tokens gets its own
            pair of times (t, s), antithetic over the batch and the blocks; teacher and student
            are called as block models, ``model(z, sigma (B, L), x_0=x_0)``, and the student
            samples block by block.

    Use, with ``step`` counting distillation steps from 0::

        distiller = DCDistiller(teacher, K)
        loss = distiller.loss(student, x_0, step).mean()   # per token (B, L): mask, reduce
        loss.backward(); opt.step()
        distiller.maybe_refresh(step, student)               # True at a round boundary

    Checkpoint ``distiller.state_dict()`` with the student; ``load_state_dict`` on resume
    restores the round and the teacher's weights, so the run continues the same round.
    Sample the student with ``distiller.sample(student, batch_size, length, steps)``.
    """

    def __init__(
        self,
        teacher: Denoiser,
        vocab_size: int,
        *,
        window: AlphaWindow | GammaSchedule = PAPER_DCD_WINDOW,
        initial_steps: int = 512,
        steps_per_round: int = 10_000,
        n_rounds: int = 5,
        divergence: Divergence = "kl_student_teacher",
        refresh_from: Literal["student", "ema"] = "student",
        kl_dtype: torch.dtype = torch.float32,
        eps: float = 1e-3,
        block_size: int | None = None,
    ) -> None:
        eps = as_float(eps, "eps")
        self.block_size = None if block_size is None else check_count(block_size, "block_size")
        super().__init__(
            teacher, vocab_size, initial_steps=check_count(initial_steps, "initial_steps"),
            steps_per_round=steps_per_round, n_rounds=n_rounds, divergence=divergence,
            refresh_from=refresh_from, kl_dtype=kl_dtype, eps=eps,
        )  # fmt: skip
        if not isinstance(window, (AlphaWindow, GammaSchedule)):
            kind = type(window).__name__
            raise TypeError(f"window must be an AlphaWindow or a GammaSchedule, got {kind}")
        n_rounds = self.n_rounds
        last_dt = 2 ** (n_rounds - 1) / self.initial_steps
        if last_dt + eps >= 1.0:
            raise ValueError(
                f"the last round's dt = 2**(n_rounds - 1) / initial_steps = 2**{n_rounds - 1} / "
                f"{initial_steps} = {last_dt:g} leaves no time t in [dt + eps, 1] (eps = {eps:g}): "
                "dt must stay below 1 - eps; raise initial_steps or lower n_rounds"
            )
        self.window = window
        gamma = window if isinstance(window, GammaSchedule) else window.for_vocab(vocab_size)
        self.schedule = DualSchedule(gamma, GaussianArgmaxTransform(vocab_size))
        """The training time axis: the gamma-window through T (not for sampling: ``sample``)."""

    _growth = 2  # round n's dt = 2^n / initial_steps

    # -- the loss -------------------------------------------------------------------------

    def _sigma(self, t: Tensor) -> Tensor:
        # -log(alpha) in float64, handed over as float32 (as the samplers do); per token (B, L)
        # for block models.
        alpha = self.schedule.alpha(t.to(torch.float64))
        if t.ndim == 2:
            return (-torch.log(alpha)).to(torch.float32)
        return noise_level(alpha, t.shape[0], t.device)

    def _call(
        self, role: str, denoiser: Any, z: Tensor, t: Tensor, cond: Mapping[str, Any] | None
    ) -> Tensor:
        """The checked x_hat logits of ``denoiser`` at (z, t): a "posterior" denoiser's are
        converted exactly (``discdiff.parameterization``) at sigma in float64, so that teacher
        and student are compared as the x_hat the sampler reads."""
        name = self._role(role, denoiser)
        logits = denoise(denoiser, z, self._sigma(t), vocab_size=self.vocab_size, cond=cond,
                         role=name)  # fmt: skip
        source = parameterization_of(denoiser)
        if source == "x_hat":
            return logits
        sigma = -torch.log(self.schedule.alpha(t.to(torch.float64)))
        return convert_logits(logits, z, sigma, source=source, target="x_hat")

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
        """``loss`` per token (B, L): t (B,) is antithetic over the batch on [dt + eps, 1],
        s = t - dt with dt of the round; (z_t, z_s) is the shared-noise argmax pair
        (``argmax_pair``); the student sees (z_t, sigma_t), the teacher (z_s, sigma_s) without
        gradients, sigma = -log T(alpha_tilde); the KL of ``divergence`` between them."""
        dt, b = self.dt(round), self.block_size
        blocks = None if b is None else check_length(x_0.shape[1], b, "x_0")
        t = antithetic_times(x_0.shape[0], eps=dt + self.eps, generator=generator,
                             device=x_0.device, dtype=torch.float64, blocks=blocks)  # fmt: skip
        if b is not None:  # one time per block -> per token (B, L); the clean copy as context
            t, cond = per_token(t, b), {**(cond or {}), "x_0": x_0}
        s = (t - dt).clamp_min(0.0)
        gamma = self.schedule.gamma
        column = (lambda a: a) if b is not None else (lambda a: a.unsqueeze(-1))
        with trusted():  # x_0 was checked above; the denoisers' outputs are checked by denoise
            z_t, z_s = argmax_pair(
                x_0,
                column(gamma.alpha_tilde(t)),
                column(gamma.alpha_tilde(s)),
                self.vocab_size,
                generator=generator,
            )
            # Teacher first: its activations are freed before the student's are built.
            with torch.no_grad():
                if isinstance(self.teacher, nn.Module):
                    self.teacher.eval()
                teacher_logits = self._call("teacher", self.teacher, z_s, s, cond)
            student_logits = self._call("student", student, z_t, t, cond)
        return self._divergence(student_logits, teacher_logits)

    # -- sampling ---------------------------------------------------------------------------

    def student_diffusion(self) -> UniformDiffusion:
        """The uniform diffusion on the log-linear schedule, the student's (``sample``), block by
        block with a ``block_size``."""
        return UniformDiffusion(self.vocab_size, eps=self.eps, block_size=self.block_size)

    def sample(
        self,
        student: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        *,
        schedule: Schedule | None = None,
        **options: Any,
    ) -> Tensor:
        """Sample the distilled ``student`` in ``steps`` steps, (batch_size, length) int64 ids.

        On ``schedule`` (default: log-linear, as the reference samples its students), whose
        alpha at t = 1 is ~0 so that z_1 ~ Uniform is the right prior; the distillation window
        (``self.schedule``) is a training axis whose alpha_1 can be far from 0 at a small K.
        ``options`` are ``discdiff.samplers.sample_uniform``'s (tail, kappa, top_k, top_p,
        time_grid, prompt, prompt_mask, cond, callback, progress, generator, seed, device);
        ``seed=`` makes each row's sample independent of the batch size. With a ``block_size``,
        ``steps`` per block (``UniformDiffusion.sample`` of a block diffusion).
        """
        warn_if_training(student, "student")
        schedule = schedule if schedule is not None else LogLinearSchedule()
        diffusion = UniformDiffusion(self.vocab_size, schedule, block_size=self.block_size)
        return diffusion.sample(student, batch_size, length, steps, **options)

    # -- checkpoints and settings (``Distiller``) ---------------------------------------------

    def _own_config(self) -> dict[str, Any]:
        gamma = self.schedule.gamma
        return {
            "window": {"kind": type(self.window).__name__, **asdict(self.window)},
            "gamma_min": gamma.gamma_min,
            "gamma_max": gamma.gamma_max,
            **({} if self.block_size is None else {"block_size": self.block_size}),
        }

    def _repr_extra(self) -> list[str]:
        gamma = self.schedule.gamma
        return [f"gamma=[{gamma.gamma_min:.6g}, {gamma.gamma_max:.6g}]"]

    _SETTINGS = ("vocab_size", "window", "initial_steps", "steps_per_round", "n_rounds",
                 "divergence", "refresh_from", "kl_dtype", "eps", "block_size")  # fmt: skip
