"""discdiff: pluggable components for discrete diffusion language models (Duo)."""

from discdiff.schedules import (
    CosineSchedule as CosineSchedule,
)
from discdiff.schedules import (
    GammaSchedule as GammaSchedule,
)
from discdiff.schedules import (
    GeometricSchedule as GeometricSchedule,
)
from discdiff.schedules import (
    LinearSchedule as LinearSchedule,
)
from discdiff.schedules import (
    LogLinearSchedule as LogLinearSchedule,
)
from discdiff.schedules import (
    Schedule as Schedule,
)

__version__ = "0.1.0"
__all__ = [
    "CosineSchedule",
    "GammaSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "Schedule",
]
