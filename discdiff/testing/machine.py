"""The machine a measurement ran on, to store beside its figures."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

__all__ = ["machine_info"]


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo, else ``platform``), cores, platform, Python and torch
    versions, torch threads (``threads``, else the current setting) and the 1-minute load."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "load_average_1min": round(load, 2),
    }
