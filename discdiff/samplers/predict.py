"""Where a sampling run calls the denoiser: a ``Predictor`` turns the tokens z_t (B, L) and the
level alpha_t into a ``Prediction``.

Everything about the call lives here, so that the loop and the steps never see it: the noise
level the denoiser is shown (sigma = -log alpha_t, per token with 0 at clean positions, or 0
for a denoiser that is not time-conditioned), the conditioning ``cond``, classifier-free
guidance (a second call with the unconditional conditioning: the prediction then carries both
logits and gamma), and the cache of the masked process (the last prediction again while the
tokens have not changed, which is exact only without time conditioning), and what the logits
mean: the steps of the uniform process expect x_hat, so the logits of a denoiser that declares
``parameterization = "posterior"`` are converted here, exactly (``discdiff.parameterization``),
at the level in float64; the masked process needs no conversion (``convert=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from discdiff.context import token_levels
from discdiff.denoise import denoise, noise_level
from discdiff.parameterization import (
    Parameterization,
    check_parameterization,
    convert_logits,
    parameterization_of,
)
from discdiff.samplers.parts import Guidance, Prediction
from discdiff.typing import Denoiser

__all__ = ["Predict", "Prediction", "Predictor"]


class Predict(Protocol):
    """What ``run`` calls: (z_t (B, L), alpha_t) -> ``Prediction``; ``calls`` counts the denoiser
    calls so far (the NFE a ``StepRecord`` reports)."""

    calls: int

    def __call__(self, z: Int[Tensor, "b l"], alpha_t: float) -> Prediction: ...


class Predictor:
    """The denoiser calls of a sampling run (a ``Predict``).

    ``denoiser(z_t, sigma, **cond)`` returns (B, L, ``vocab_size``) logits (checked by
    ``discdiff.denoise.denoise``). With ``guidance`` it is called a second time with
    ``guidance.uncond``. With a ``clean`` mask (B, L) it sees per-token levels, 0 there.
    ``time_conditioned=False`` shows it sigma = 0 whatever alpha_t; ``cache`` (only then valid)
    returns the last prediction again while z is unchanged (one host sync per call), without
    calling the denoiser. ``convert`` (the uniform process): the denoiser's logits become what
    the step ``reads`` — x_hat (the exact steps) or the posterior (a policy such as
    ``EntropyBoundStep``) — before any step sees them (``Prediction.logits`` and the
    callback's ``StepRecord`` hold them); ``convert=False`` hands them over as they are.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        *,
        cond: Mapping[str, Any] | None = None,
        guidance: Guidance | None = None,
        clean: Bool[Tensor, "b l"] | None = None,
        time_conditioned: bool = True,
        cache: bool = False,
        convert: bool = True,
        reads: Parameterization = "x_hat",
    ) -> None:
        if cache and time_conditioned:
            raise ValueError(
                "cache=True reuses predictions across noise levels, which is only valid when the "
                "denoiser is not time-conditioned; pass cache=False (or time_conditioned=False)"
            )
        self.denoiser, self.vocab_size, self.cond = denoiser, vocab_size, cond
        self.guidance, self.clean = guidance, clean
        self.time_conditioned, self.cache = time_conditioned, cache
        self.target = check_parameterization(reads, "reads")
        self.source = parameterization_of(denoiser) if convert else self.target
        self.calls = 0
        self._last: tuple[Tensor, Prediction] | None = None

    def __call__(self, z: Int[Tensor, "b l"], alpha_t: float) -> Prediction:
        if self._last is not None and torch.equal(self._last[0], z):
            return self._last[1]
        level = alpha_t if self.time_conditioned else 1.0
        sigma = token_levels(noise_level(level, z.shape[0], z.device), self.clean)
        logits = self._read(self._denoise(z, sigma, self.cond), z, level)
        pred = Prediction(logits)
        if self.guidance is not None:
            uncond = self._read(self._denoise(z, sigma, self.guidance.uncond), z, level)
            pred = Prediction(logits, uncond, self.guidance.scale)
        if self.cache:
            self._last = (z, pred)
        return pred

    def _denoise(self, z: Tensor, sigma: Tensor, cond: Mapping[str, Any] | None) -> Tensor:
        self.calls += 1
        return denoise(self.denoiser, z, sigma, vocab_size=self.vocab_size, cond=cond)

    def _read(self, logits: Tensor, z: Tensor, level: float) -> Tensor:
        """The logits the step reads, converted from the denoiser's at sigma = -log alpha_t in
        float64 (the float32 sigma the denoiser sees would cost the shift ~1e-7 of its value)."""
        if self.source == self.target:
            return logits
        alpha = torch.tensor(level, dtype=torch.float64, device=z.device)
        sigma = token_levels(-torch.log(alpha).expand(z.shape[0]), self.clean)
        return convert_logits(logits, z, sigma, source=self.source, target=self.target)
