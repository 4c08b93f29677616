"""The uniform-state (Duo / UDLM) step as a part: ``UniformStep(kappa=..., filter=...)``.

Called by ``run`` with a ``Prediction``, the tokens z_t (B, L), the step's ``Interval`` and the
randomness, it returns z_s (B, L): the ancestral step, or the Ψ step when ``kappa`` is set
(``discdiff.samplers.psi``), each drawn exactly (``discdiff.samplers.steps``; on CUDA without a
filter the Triton kernel of ``discdiff.kernels``). A guided prediction (one that carries the
unconditional logits) draws from the guided transition (``discdiff.samplers.guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from discdiff.samplers.categorical import Source
from discdiff.samplers.grid import Interval
from discdiff.samplers.guidance import guided_uniform_step
from discdiff.samplers.parts import Filter
from discdiff.samplers.predict import Prediction
from discdiff.samplers.psi import Kappa, check_kappa, kappa_at
from discdiff.samplers.steps import uniform_step

__all__ = ["UniformStep"]


@dataclass(frozen=True)
class UniformStep:
    """One reverse step t -> s of the uniform-state process.

    ``kappa``: the Ψ weight, None (ancestral), a number in [0, 1] or a schedule kappa(t, s)
    (``ConstantKappa``, ``CappedKappa``); ``filter``: top-k / nucleus filtering of x_hat.
    Randomness, in order, as ``uniform_ancestral_step`` (unguided) or ``guided_uniform_step``
    describe it.
    """

    kappa: Kappa | None = None
    filter: Filter = Filter()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kappa", check_kappa(self.kappa))
        if not isinstance(self.filter, Filter):
            raise ValueError(f"filter (UniformStep.filter) must be a Filter, got {self.filter!r}")

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], at: Interval, generator: Source
    ) -> Int[Tensor, "b l"]:
        kap = None if self.kappa is None else kappa_at(self.kappa, at.t, at.s)
        top_k, top_p = self.filter.top_k, self.filter.top_p
        if pred.uncond is None:
            return uniform_step(pred.logits, z, at.alpha_s, at.alpha_t, kap, top_k, top_p,
                                 generator)  # fmt: skip
        assert pred.gamma is not None
        return guided_uniform_step(pred.logits, pred.uncond, z, at.alpha_s, at.alpha_t,
                                   pred.gamma, kappa=kap, top_k=top_k, top_p=top_p,
                                   generator=generator)  # fmt: skip
