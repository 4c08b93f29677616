"""The masked (MDLM, SUBS) step as a part: ``MaskedStep(mask_id, remask=..., filter=...)``.

Called by ``run`` with a ``Prediction``, the tokens z_t (B, L), the step's ``Interval`` and the
randomness, it returns z_s (B, L): masked tokens unmask by drawing from x_hat, unmasked ones
stay, or are remasked with probability sigma(t, s) under a ReMDM schedule ``remask``
(``discdiff.samplers.steps.masked_ancestral_step`` states the law). A guided prediction draws
from the guided law (``discdiff.samplers.guidance``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from discdiff.samplers.categorical import Source
from discdiff.samplers.grid import Interval
from discdiff.samplers.guidance import guided_masked_step
from discdiff.samplers.parts import Filter
from discdiff.samplers.predict import Prediction
from discdiff.samplers.steps import masked_step
from discdiff.typing import as_float, check_count

__all__ = ["MaskedStep", "remask_at"]


@dataclass(frozen=True)
class MaskedStep:
    """One reverse step t -> s of the masked process.

    ``mask_id``: the mask token's id (an int >= 0, below the denoiser's K); ``remask``: None
    (plain MDLM) or a ReMDM schedule sigma(t, s) (``CappedRemask``, ``RescaledRemask`` or a
    callable returning sigma in [0, min(1, (1 - alpha_s) / alpha_t)]); ``filter``: top-k /
    nucleus filtering of x_hat. Randomness: three float64 uniforms per token.
    """

    mask_id: int
    remask: Callable[[float, float], float] | None = None
    filter: Filter = Filter()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_id", check_count(self.mask_id, "mask_id", minimum=0))
        if self.remask is not None and not callable(self.remask):
            raise ValueError(
                f"remask (MaskedStep.remask) must be a schedule sigma(t, s) such as CappedRemask "
                f"or RescaledRemask, or None, got {self.remask!r}"
            )
        if not isinstance(self.filter, Filter):
            raise ValueError(f"filter (MaskedStep.filter) must be a Filter, got {self.filter!r}")

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]:
        sigma = None if self.remask is None else remask_at(self.remask, at)
        top_k, top_p = self.filter.top_k, self.filter.top_p
        if pred.uncond is None:
            return masked_step(pred.logits, z, at.alpha_s, at.alpha_t, self.mask_id, sigma,
                                top_k, top_p, generator)  # fmt: skip
        assert pred.gamma is not None
        return guided_masked_step(pred.logits, pred.uncond, z, at.alpha_s, at.alpha_t,
                                  pred.gamma, mask_id=self.mask_id, sigma=sigma, top_k=top_k,
                                  top_p=top_p, generator=generator)  # fmt: skip


def remask_at(remask: Callable[[float, float], float], at: Interval) -> float:
    """sigma(t, s) of the step ``at``, checked to lie in [0, sigma_max],
    sigma_max = min(1, (1 - alpha_s) / alpha_t)."""
    t, s, a_t, a_s = at
    value = as_float(remask(t, s), "remask(t, s)")
    sigma_max = 1.0 if a_t <= 0 else min(1.0, (1.0 - a_s) / a_t)
    if not 0.0 <= value <= sigma_max + 1e-12:
        raise ValueError(
            f"remask(t={t:.6g}, s={s:.6g}) = {value} is outside [0, sigma_max] with sigma_max = "
            f"min(1, (1 - alpha_s) / alpha_t) = {sigma_max:.6g}: the unmasking probability "
            "would leave [0, 1]"
        )
    return value
