"""Which implementation runs: Triton on CUDA when it imports, PyTorch otherwise."""

from __future__ import annotations

import functools
import os
from typing import Literal

from torch import Tensor

Backend = Literal["auto", "triton", "torch"]


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


def use_triton(like: Tensor, backend: Backend) -> bool:
    """True for the Triton path: ``backend="triton"``, or "auto" on a CUDA tensor with Triton.

    "triton" on a CPU tensor needs the interpreter (``TRITON_INTERPRET=1`` set before Triton is
    first imported); it raises when Triton is missing or cannot run on the tensor's device.
    """
    if backend == "torch":
        return False
    if backend == "auto":
        return like.is_cuda and triton_available()
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
