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

from discdiff import config, samplers
from discdiff._chunks import chunk_rows
from discdiff.checks import check_generator, check_x0
from discdiff.denoise import denoise, noise_level, warn_if_training
from discdiff.duality import AlphaWindow, DualSchedule, GaussianArgmaxTransform, signal_to_noise
from discdiff.losses._common import Reduction, check_mask, check_reduction, reduce_loss
from discdiff.rounds import TeacherRounds, check_distillation_settings, unwrap
from discdiff.schedules import GammaSchedule, LogLinearSchedule, Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import (
    Denoiser,
    as_float,
    check_count,
    check_range,
    check_tokens,
    check_vocab_size,
    trusted,
    typechecked,
)

__all__ = ["PAPER_DCD_WINDOW", "DCDistiller", "argmax_pair", "token_kl"]

Divergence = Literal["kl_student_teacher", "kl_teacher_student"]

PAPER_DCD_WINDOW = AlphaWindow(0.9986941399953239, 0.006186308465627621)
"""The released run's gamma in [-4, -1] at K = 50257: alpha from 0.9987 to 0.0062
(``AlphaWindow.from_gamma(-4, -1, 50257)``, which the tests check)."""


# ----------------------------------------------------------------------------------------------
# The shared-noise argmax pair, without the (B, L, K) noise
# ----------------------------------------------------------------------------------------------


@typechecked
def argmax_pair(
    x_0: Int[Tensor, "b l"],
    alpha_tilde_t: Float[Tensor, "b _l"],
    alpha_tilde_s: Float[Tensor, "b _l"],
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "b l"], Int[Tensor, "b l"]]:
    """(z_t, z_s) = (argmax w_t, argmax w_s) for w = alpha_tilde onehot(x_0) + sigma_tilde eps with
    one eps ~ N(0, I_K) shared by both levels; ``alpha_tilde_*`` are (B, 1) or (B, L) in [0, 1].

    Exact in law, and O(1) per token instead of O(K): eps is never drawn. Every coordinate but
    the clean one is sigma_tilde eps_k at both levels, so the best rival is the same class j at
    both levels, uniform over the K - 1 others, with value sigma_tilde m, m the maximum of K - 1
    standard normals (drawn by inverting its cdf Phi(m)^(K-1)). The clean coordinate wins at a
    level iff alpha_tilde / sigma_tilde + eps_x > m. Each of z_t, z_s has the uniform-state law
    with alpha = T(alpha_tilde); their joint law is that of ``processes.gaussian_latent`` called
    twice with the same ``noise``. Returns two int64 (B, L) tensors.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_tilde_t, "alpha_tilde_t", 0.0, 1.0)
    check_range(alpha_tilde_s, "alpha_tilde_s", 0.0, 1.0)
    for name, a in (("alpha_tilde_t", alpha_tilde_t), ("alpha_tilde_s", alpha_tilde_s)):
        if a.shape[1] not in (1, x_0.shape[1]):
            raise ValueError(
                f"{name} must be (B, 1) or (B, L) = {tuple(x_0.shape)}, got {tuple(a.shape)}"
            )
    shape, device = x_0.shape, x_0.device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    eps_x = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    offset = torch.randint(1, vocab_size, shape, generator=generator, device=device)
    rival = torch.remainder(x_0.long() + offset, vocab_size)
    # m = Phi^-1(u^(1/(K-1))) through the upper tail: 1 - u^(1/(K-1)) keeps its precision.
    m = -torch.special.ndtri(-torch.expm1(torch.log(u) / (vocab_size - 1)))
    margin = eps_x - m
    z_t = torch.where(signal_to_noise(alpha_tilde_t) + margin > 0, x_0.long(), rival)
    z_s = torch.where(signal_to_noise(alpha_tilde_s) + margin > 0, x_0.long(), rival)
    return z_t, z_s


# ----------------------------------------------------------------------------------------------
# Per-token KL between two softmaxes, lean in memory
# ----------------------------------------------------------------------------------------------


def _chunk_rows(k: int, device: torch.device) -> int:
    return chunk_rows(k, device, cpu_elements=1 << 19, device_elements=1 << 26)


def _log_ratio(p_logits: Tensor, q_logits: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(p, log p - log q) for a chunk of rows, in ``dtype``; 0 where p = 0 (no 0 * inf NaNs)."""
    log_p = torch.log_softmax(p_logits.to(dtype), dim=-1)
    log_q = torch.log_softmax(q_logits.to(dtype), dim=-1)
    p = log_p.exp()
    return p, torch.where(p > 0, log_p - log_q, 0.0)


class _TokenKL(torch.autograd.Function):
    """KL(softmax(a) || softmax(b)) per row of (N, K) logits, processed in chunks of rows.

    Saves only the two logits tensors (which exist anyway): no (N, K) temporary outlives a chunk.
    With p = softmax(a), q = softmax(b), d = log p - log q and kl = sum p d:
    d kl / d a = p (d - kl) and d kl / d b = q - p.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        n, k = a.shape
        out = torch.empty(n, dtype=dtype, device=a.device)
        step = _chunk_rows(k, a.device)
        for r0 in range(0, n, step):
            p, d = _log_ratio(a[r0 : r0 + step], b[r0 : r0 + step], dtype)
            out[r0 : r0 + step] = (p * d).sum(-1)
        ctx.save_for_backward(a, b, out)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        a, b, kl = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = torch.empty_like(a) if need_a else None
        grad_b = torch.empty_like(b) if need_b else None
        n, k = a.shape
        step = _chunk_rows(k, a.device)
        for r0 in range(0, n, step):
            rows = slice(r0, r0 + step)
            g = grad[rows].to(ctx.dtype).unsqueeze(-1)
            p, d = _log_ratio(a[rows], b[rows], ctx.dtype)
            if grad_a is not None:
                grad_a[rows] = g * p * (d - kl[rows].unsqueeze(-1))
            if grad_b is not None:
                q = torch.softmax(b[rows].to(ctx.dtype), dim=-1)
                grad_b[rows] = g * (q - p)
        return grad_a, grad_b, None


@typechecked
def token_kl(
    p_logits: Float[Tensor, "b l k"],
    q_logits: Float[Tensor, "b l k"],
    *,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "b l"]:
    """KL(softmax(p_logits) || softmax(q_logits)) per token, (B, L), computed in ``dtype``.

    Log-softmax based (no overflow, no log 0: classes with p = 0 contribute 0), differentiable
    in both arguments, and lean: backward recomputes the softmaxes chunk by chunk instead of
    keeping (B, L, K) temporaries alive. ``dtype`` (float32 or float64) is the dtype of the
    arithmetic and of the result; float64 removes rounding from near-zero KLs.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p_logits and q_logits must have the same shape, got {tuple(p_logits.shape)} and "
            f"{tuple(q_logits.shape)}"
        )
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    b, ln, k = p_logits.shape
    flat = _TokenKL.apply(p_logits.reshape(b * ln, k), q_logits.reshape(b * ln, k), dtype)
    return flat.reshape(b, ln)


# ----------------------------------------------------------------------------------------------
# The distiller
# ----------------------------------------------------------------------------------------------


class DCDistiller:
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
    ) -> None:
        check_vocab_size(vocab_size)
        rounds = TeacherRounds(
            teacher, steps_per_round=steps_per_round, n_rounds=n_rounds, refresh_from=refresh_from
        )
        initial_steps = check_count(initial_steps, "initial_steps")
        n_rounds = rounds.n_rounds
        if not isinstance(window, (AlphaWindow, GammaSchedule)):
            kind = type(window).__name__
            raise TypeError(f"window must be an AlphaWindow or a GammaSchedule, got {kind}")
        eps = as_float(eps, "eps")
        check_distillation_settings(divergence, refresh_from, kl_dtype, eps)
        last_dt = 2 ** (n_rounds - 1) / initial_steps
        if last_dt + eps >= 1.0:
            raise ValueError(
                f"the last round's dt = 2**(n_rounds - 1) / initial_steps = 2**{n_rounds - 1} / "
                f"{initial_steps} = {last_dt:g} leaves no time t in [dt + eps, 1] (eps = {eps:g}): "
                "dt must stay below 1 - eps; raise initial_steps or lower n_rounds"
            )
        self.vocab_size = vocab_size
        self.window = window
        gamma = window if isinstance(window, GammaSchedule) else window.for_vocab(vocab_size)
        self.schedule = DualSchedule(gamma, GaussianArgmaxTransform(vocab_size))
        """The training time axis: the gamma-window through T (not for sampling: ``sample``)."""
        self.initial_steps = initial_steps
        self.divergence: Divergence = divergence
        self.kl_dtype = kl_dtype
        self.eps = eps
        self.rounds = rounds
        """The frozen teacher, its round and the refresh protocol (``TeacherRounds``)."""

    # -- the round schedule (``TeacherRounds``) ---------------------------------------------

    teacher = property(lambda self: self.rounds.teacher, doc="The frozen teacher.")
    round = property(lambda self: self.rounds.round, doc="The round the teacher belongs to.")
    steps_per_round = property(lambda self: self.rounds.steps_per_round)
    n_rounds = property(lambda self: self.rounds.n_rounds)
    refresh_from = property(lambda self: self.rounds.refresh_from)

    def round_at(self, step: int) -> int:
        """The round of distillation step ``step`` (0-based); steps past the last round stay in
        the last round."""
        return self.rounds.round_at(step)

    def end_of_round(self, step: int) -> bool:
        """Whether ``step`` is the last step of a round that another round follows."""
        return self.rounds.end_of_round(step)

    def dt(self, round: int) -> float:
        """The time gap of round ``round``: dt = 2^round / initial_steps."""
        return 2 ** self.rounds.check_round(round) / self.initial_steps

    # -- the loss -------------------------------------------------------------------------

    def _sigma(self, t: Tensor) -> Tensor:
        # -log(alpha) in float64, handed over as float32 (as the samplers do).
        return noise_level(self.schedule.alpha(t.to(torch.float64)), t.shape[0], t.device)

    def _call(
        self, role: str, denoiser: Any, z: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None
    ) -> Tensor:
        name = f"{role} ({type(unwrap(denoiser)).__name__})"
        return denoise(denoiser, z, sigma, vocab_size=self.vocab_size, cond=cond, role=name)

    def loss(
        self,
        student: Denoiser,
        x_0: Int[Tensor, "b l"],
        step: int = 0,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        mask: Bool[Tensor, "b l"] | None = None,
        reduction: Reduction = "none",
    ) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
        """The distillation loss at distillation step ``step``: per token (B, L), or reduced.

        The diffusions' convention (``UniformDiffusion.loss``): ``step`` positional or keyword,
        ``mask`` (B, L) True at the tokens that count, ``reduction`` "none" (0 at the ignored
        tokens), "sum" or "mean" over the tokens that count.

        t (B,) is antithetic over the batch on [dt + eps, 1], s = t - dt with dt of the step's
        round; (z_t, z_s) is the shared-noise argmax pair (``argmax_pair``); the student sees
        (z_t, sigma_t), the teacher (z_s, sigma_s) without gradients, sigma = -log T(alpha_tilde).
        Returns the KL of ``divergence`` per token in ``kl_dtype``; ``cond`` (the denoisers'
        keyword conditioning) goes to both.
        """
        x_0 = check_x0(x_0, self.vocab_size)  # any integer dtype in, int64 out
        check_generator(generator)
        check_mask(mask, x_0.shape)
        check_reduction(reduction)
        dt = self.dt(self.rounds.current(step))
        t = antithetic_times(
            x_0.shape[0], eps=dt + self.eps, generator=generator, device=x_0.device,
            dtype=torch.float64,
        )
        s = (t - dt).clamp_min(0.0)
        gamma = self.schedule.gamma
        with trusted():  # x_0 was checked above; the denoisers' outputs are checked by denoise
            z_t, z_s = argmax_pair(
                x_0,
                gamma.alpha_tilde(t).unsqueeze(-1),
                gamma.alpha_tilde(s).unsqueeze(-1),
                self.vocab_size,
                generator=generator,
            )
            # Teacher first: its activations are freed before the student's are built.
            with torch.no_grad():
                if isinstance(self.teacher, nn.Module):
                    self.teacher.eval()
                teacher_logits = self._call("teacher", self.teacher, z_s, self._sigma(s), cond)
            student_logits = self._call("student", student, z_t, self._sigma(t), cond)
        if self.divergence == "kl_student_teacher":
            kl = token_kl(student_logits, teacher_logits, dtype=self.kl_dtype)
        else:
            kl = token_kl(teacher_logits, student_logits, dtype=self.kl_dtype)
        return reduce_loss(kl, mask, reduction)

    # -- sampling ---------------------------------------------------------------------------

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
        ``seed=`` makes each row's sample independent of the batch size.
        """
        warn_if_training(student, "student")
        return samplers.sample_uniform(
            student, batch_size, length, steps,
            schedule=schedule if schedule is not None else LogLinearSchedule(),
            vocab_size=self.vocab_size, **options,
        )  # fmt: skip

    # -- teacher refresh ------------------------------------------------------------------

    def maybe_refresh(self, step: int, student: Any, ema: Any = None) -> bool:
        """Call after the optimiser update of distillation step ``step``: at a round boundary,
        copy the student (``refresh_from="student"``) or its EMA into the teacher and return
        True; otherwise return False. Idempotent for a given step.

        ``ema`` is an ``nn.Module`` holding the averaged weights (e.g. a
        ``torch.optim.swa_utils.AveragedModel``, or a copy of the student) or a state dict;
        it is required when ``refresh_from="ema"`` and ignored otherwise.
        """
        return self.rounds.maybe_refresh(step, student, ema)

    # -- checkpoints ----------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        gamma = self.schedule.gamma
        return {
            "vocab_size": self.vocab_size,
            "window": {"kind": type(self.window).__name__, **asdict(self.window)},
            "gamma_min": gamma.gamma_min,
            "gamma_max": gamma.gamma_max,
            "initial_steps": self.initial_steps,
            "steps_per_round": self.steps_per_round,
            "n_rounds": self.n_rounds,
            "divergence": self.divergence,
            "eps": self.eps,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"round", "teacher", "config"}``: the teacher's round and weights (None for a
        teacher that is not an ``nn.Module``) and the settings that define the rounds."""
        return self.rounds.state_dict(self._config())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s round and teacher weights; the settings must match."""
        self.rounds.load_state_dict(state, self._config(), "DCDistiller")

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._SETTINGS)
        gamma = self.schedule.gamma
        return (f"DCDistiller({settings}, gamma=[{gamma.gamma_min:.6g}, {gamma.gamma_max:.6g}], "
                f"round={self.round})")  # fmt: skip

    # -- settings as plain data -----------------------------------------------------------

    _SETTINGS = ("vocab_size", "window", "initial_steps", "steps_per_round", "n_rounds",
                 "divergence", "refresh_from", "kl_dtype", "eps")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The distiller's settings, JSON-safe, nested objects as dicts (``discdiff.config``):
        not the teacher's weights nor the round (those are ``state_dict()``'s)."""
        return config.settings_to_dict(self, self._SETTINGS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, teacher: Denoiser) -> DCDistiller:
        """A distiller with ``to_dict``'s settings around ``teacher`` (at round 0; restore a
        run's round and teacher with ``load_state_dict``)."""
        return config.distiller_from_dict(cls, data, cls._SETTINGS, teacher)
