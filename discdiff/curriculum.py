"""Duo's curriculum (Concepts §4): train first on relaxed Gaussian latents, then on the discrete
process.

While the curriculum is active the noise level is drawn on a Gaussian window (gamma in
[gamma_min, gamma_max], alpha_tilde^2 = sigmoid(-gamma)), the latent
w_t = alpha_tilde x + sigma_tilde eps is built, and the denoiser sees softmax(w_t / tau) (or,
with ``top_k``, only the top-k entries as a ``Bag``); the loss is the uniform NELBO at
z_t = argmax w_t with alpha_t = T(alpha_tilde_t) and its exact derivative.

The soft input reaches the denoiser in the dtype it computes in: ``dtype`` if given, else the
dtype of the model's floating-point parameters (a bfloat16 model gets bfloat16 probabilities,
as its embedding matmul needs), else float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from discdiff import config
from discdiff.context import hold_clean
from discdiff.duality import AlphaWindow, DualSchedule, GaussianArgmaxTransform
from discdiff.processes.gaussian import gaussian_latent, relax, topk_gaussian_latent
from discdiff.schedules import GammaSchedule
from discdiff.typing import Bag, as_float, check_count

__all__ = ["PAPER_CURRICULUM_WINDOW", "GaussianCurriculum"]

PAPER_CURRICULUM_WINDOW = AlphaWindow(0.9454741169711672, 0.04931763591609528)
"""The released OWT run's gamma in [-3.55, -1.85] at K = 50257: alpha from 0.945 to 0.049
(``AlphaWindow.from_gamma(-3.55, -1.85, 50257)``, which the tests check)."""


@dataclass(frozen=True, kw_only=True)
class GaussianCurriculum:
    """Duo's first training phase: feed the denoiser relaxed Gaussian latents.

    Args:
        window: the noise window, an ``AlphaWindow`` (default: the paper's alpha range, mapped
            to each vocabulary by ``UniformDiffusion``) or a ``GammaSchedule`` (gamma as is).
        tau: the softmax temperature at step 0; with ``tau_end`` set, log10(tau) is annealed
            linearly to log10(tau_end) at ``end_step`` (the released runs keep tau = 1e-3).
        end_step: the training step at which the curriculum stops.
        top_k: feed only the top-k coordinates of the latent as a ``Bag`` (Duo++), or None.
        dtype: the float dtype of the soft input (the probabilities, or the bag's weights), a
            ``torch.dtype`` or its name ("bfloat16"); None: the denoiser's parameter dtype
            (float32 for a denoiser without parameters). See ``input_dtype``.
    """

    window: AlphaWindow | GammaSchedule = field(default=PAPER_CURRICULUM_WINDOW)
    tau: float = 1e-3
    end_step: int = 500_000
    top_k: int | None = None
    tau_end: float | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        tau = as_float(self.tau, "tau")
        tau_end = None if self.tau_end is None else as_float(self.tau_end, "tau_end")
        if not tau > 0 or (tau_end is not None and not tau_end > 0):
            raise ValueError(f"tau must be > 0, got tau={self.tau}, tau_end={self.tau_end}")
        check_count(self.end_step, "end_step", minimum=0)
        if self.top_k is not None:
            check_count(self.top_k, "top_k")
        if not isinstance(self.window, (AlphaWindow, GammaSchedule)):
            kind = type(self.window).__name__
            raise TypeError(f"window must be an AlphaWindow or a GammaSchedule, got {kind}")
        if self.dtype is not None:  # a name from to_dict's JSON, or a dtype
            object.__setattr__(self, "dtype", config.decode_dtype(self.dtype, "dtype"))

    def input_dtype(self, denoiser: Any) -> torch.dtype:
        """The dtype of the soft input handed to ``denoiser``: ``dtype``, else the dtype of its
        first floating-point parameter (a bfloat16 model's embedding matmul rejects a float32
        input), else float32."""
        if self.dtype is not None:
            return self.dtype
        if isinstance(denoiser, torch.nn.Module):
            for parameter in denoiser.parameters():
                if parameter.is_floating_point():
                    return parameter.dtype
        return torch.float32

    def gamma_window(self, vocab_size: int) -> GammaSchedule:
        """The gamma-schedule of the window for a vocabulary of ``vocab_size`` tokens."""
        if isinstance(self.window, GammaSchedule):
            return self.window
        return self.window.for_vocab(vocab_size)

    def schedule(self, vocab_size: int) -> DualSchedule:
        """The discrete schedule of the window: alpha_t = T(alpha_tilde_t) and its derivative."""
        return DualSchedule(self.gamma_window(vocab_size), GaussianArgmaxTransform(vocab_size))

    def relaxed_input(
        self, x_0: Tensor, alpha_tilde: Tensor, step: int, vocab_size: int, dtype: torch.dtype,
        *, generator: torch.Generator | None = None, clean: Tensor | None = None,
    ) -> tuple[Tensor | Bag, Tensor]:  # fmt: skip
        """The denoiser's input at step ``step`` and its argmax z_t (B, L): softmax(w_t / tau)
        (B, L, K) of the Gaussian latent at level ``alpha_tilde`` (B, 1), or with ``top_k`` its
        top-k entries as a ``Bag``; the soft values in ``dtype`` (``input_dtype``). ``clean``
        (B, L) positions hold x_0 exactly (a one-hot row, or a bag of weight 1 on x_0)."""
        tau = self.tau_at(step)
        if self.top_k is None:
            latent = gaussian_latent(x_0, alpha_tilde, vocab_size, generator=generator)
            relaxed: Tensor | Bag = relax(latent.w_t, tau).to(dtype)
            z_t = latent.z_t
        else:
            bag = topk_gaussian_latent(
                x_0, alpha_tilde, vocab_size, self.top_k, tau, generator=generator
            )
            relaxed, z_t = Bag(bag.ids, bag.weights.to(dtype)), bag.z_t
        if clean is not None:  # clean context: the token itself, exactly
            relaxed, z_t = hold_clean(relaxed, z_t, x_0, clean, vocab_size)
        return relaxed, z_t

    def active(self, step: int) -> bool:
        return step < self.end_step

    def tau_at(self, step: int) -> float:
        if self.tau_end is None or self.end_step == 0:
            return self.tau
        frac = min(max(step / self.end_step, 0.0), 1.0)
        return 10 ** ((1 - frac) * math.log10(self.tau) + frac * math.log10(self.tau_end))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings, the window nested: ``{"type": "GaussianCurriculum", "window":
        {"type": "AlphaWindow", ...}, "tau": ..., ...}`` (see ``discdiff.config``)."""
        return config.dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GaussianCurriculum:
        """The curriculum ``to_dict`` describes."""
        return config.dataclass_from_dict(cls, data)
