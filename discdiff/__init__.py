"""discdiff: pluggable components for discrete diffusion language models (Duo).

The public surface is re-exported here; submodules hold the rest (``discdiff.losses``,
``discdiff.samplers``, ``discdiff.processes``, ``discdiff.models``).
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # torch warns once, while it is imported, when NumPy is not installed ("Failed to initialize
    # NumPy"); discdiff never uses NumPy, so the warning would only puzzle its users.
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch as _torch  # noqa: F401

from discdiff.curriculum import GaussianCurriculum
from discdiff.denoise import FusedHead
from discdiff.diffusion import NELBO, MaskedDiffusion, UniformDiffusion
from discdiff.distill import DCDistiller
from discdiff.duality import AlphaWindow, DualSchedule, GaussianArgmaxTransform
from discdiff.labels import LabelDropout
from discdiff.metrics import BoundMeter, sample_entropy
from discdiff.schedules import (
    CosineSchedule,
    GammaSchedule,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
    Schedule,
)
from discdiff.sdtt import SDTTDistiller
from discdiff.timesteps import AntitheticTimes
from discdiff.typing import Bag, Denoiser

__version__ = "0.1.0"
__all__ = [
    "NELBO",
    "AlphaWindow",
    "AntitheticTimes",
    "Bag",
    "BoundMeter",
    "CosineSchedule",
    "DCDistiller",
    "Denoiser",
    "FusedHead",
    "DualSchedule",
    "GammaSchedule",
    "GaussianArgmaxTransform",
    "GaussianCurriculum",
    "GeometricSchedule",
    "LabelDropout",
    "LinearSchedule",
    "LogLinearSchedule",
    "MaskedDiffusion",
    "SDTTDistiller",
    "Schedule",
    "UniformDiffusion",
    "sample_entropy",
]
