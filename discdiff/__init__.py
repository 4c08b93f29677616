"""discdiff: pluggable components for discrete diffusion language models (Duo).

The public surface is re-exported here; submodules hold the rest (``discdiff.losses``,
``discdiff.samplers``, ``discdiff.processes``, ``discdiff.models``).
"""

from discdiff.diffusion import NELBO, GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.schedules import (
    CosineSchedule,
    GammaSchedule,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
    Schedule,
)
from discdiff.typing import Denoiser

__version__ = "0.1.0"
__all__ = [
    "NELBO",
    "CosineSchedule",
    "DCDistiller",
    "Denoiser",
    "DualSchedule",
    "GammaSchedule",
    "GaussianArgmaxTransform",
    "GaussianCurriculum",
    "GeometricSchedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "MaskedDiffusion",
    "Schedule",
    "UniformDiffusion",
]
