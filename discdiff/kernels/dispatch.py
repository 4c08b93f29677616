"""The one place that decides whether an operation runs its Triton kernel or its PyTorch path.

Every caller asks ``use_triton``: the uniform NELBO (``discdiff.losses.uniform_nelbo``, hence
``UniformDiffusion.loss`` on any denoiser), the fused output layer + loss
(``discdiff.losses.fused_linear_uniform_nelbo``, block by block), the uniform reverse step
(``discdiff.samplers.uniform_ancestral_step`` and the samplers' loops) and the entry points of
``discdiff.kernels``. The rule, for ``backend``:

    "torch"   the PyTorch path.
    "triton"  the Triton kernel; on a CPU tensor only under the Triton interpreter
              (``TRITON_INTERPRET=1`` set before triton is imported), which is how the tests
              run the kernels; a clear error when Triton is missing or cannot run there.
    "auto"    Triton when the tensor's device type is in ``TRITON_DEVICE_TYPES`` (CUDA), Triton
              imports, and the data is not float64 (the kernels reduce in float32: float64 work
              stays on the exact PyTorch path); else PyTorch.

Enabling the kernels on another device type is an entry in ``TRITON_DEVICE_TYPES``.

This choice is separate from ``discdiff.losses.dispatch``'s (the fused output head or the
materialised logits): that one picks how the logits are produced, this one how each row's loss
is computed from them, and the fused head asks this module again for each of its blocks.

``discdiff.kernels`` sits below ``discdiff.losses`` and ``discdiff.samplers`` in the import
graph. Its entry points ``uniform_nelbo`` and ``uniform_ancestral_step`` are those libraries'
public functions, which register themselves here (``provide``) when they are imported (as
``import discdiff`` does), so that this package imports nothing from them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

__all__ = [
    "TRITON_DEVICE_TYPES",
    "Backend",
    "entry_point",
    "interpreting",
    "provide",
    "triton_available",
    "use_triton",
]

Backend = Literal["auto", "triton", "torch"]
"""The ``backend=`` argument of the public calls: the rule above, or one path forced."""

TRITON_DEVICE_TYPES: frozenset[str] = frozenset({"cuda"})
"""The device types on which ``backend="auto"`` takes the Triton kernels."""

F = TypeVar("F", bound=Callable[..., Any])
_ENTRY_POINTS: dict[str, Callable[..., Any]] = {}


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports (it is optional: CPU-only installs need not have it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(like: Tensor, backend: Backend, *, dtype: torch.dtype | None = None) -> bool:
    """True for the Triton path of an operation on ``like`` (its input), by the module's rule.

    ``dtype``: the dtype the operation computes in, when it is not ``like``'s (the fused head
    passes its matmuls' dtype). Raises ValueError for an unknown ``backend`` and RuntimeError
    when "triton" cannot run (no triton package; a CPU tensor outside the interpreter).
    """
    if backend == "torch":
        return False
    if backend == "auto":
        exact = (like.dtype if dtype is None else dtype) == torch.float64
        return like.device.type in TRITON_DEVICE_TYPES and triton_available() and not exact
    if backend != "triton":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if not like.is_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' on a CPU tensor runs only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is imported"
        )
    return True


def provide(name: str) -> Callable[[F], F]:
    """Register the library function behind ``discdiff.kernels.<name>`` (a decorator)."""

    def register(fn: F) -> F:
        _ENTRY_POINTS[name] = fn
        return fn

    return register


def entry_point(name: str) -> Callable[..., Any]:
    """The function registered by ``provide(name)``; importing ``discdiff`` registers both."""
    try:
        return _ENTRY_POINTS[name]
    except KeyError:
        raise RuntimeError(
            f"discdiff.kernels.{name} is provided by discdiff.losses / discdiff.samplers: "
            "import discdiff (or those packages) first"
        ) from None
