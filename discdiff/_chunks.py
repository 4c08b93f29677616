"""How many rows of a (rows, K) array one step of a chunked loop handles.

The chunked paths (the memory-lean uniform NELBO, categorical sampling, the distillation KL) walk
a (B*L, K) array a slice of rows at a time, so that no temporary of size (B, L, K) is made. A
chunk of about 1 MiB of float32 per temporary stays in a CPU's cache; on an accelerator larger
chunks mean fewer kernel launches, and the memory is there.
"""

from __future__ import annotations

import torch

__all__ = ["chunk_rows"]

CPU_ELEMENTS = 1 << 18
"""Elements per temporary on CPU: 1 MiB of float32."""
DEVICE_ELEMENTS = 1 << 25
"""Elements per temporary on an accelerator: 128 MiB of float32."""


def chunk_rows(
    k: int,
    device: torch.device | str,
    *,
    cpu_elements: int = CPU_ELEMENTS,
    device_elements: int = DEVICE_ELEMENTS,
) -> int:
    """Rows of K elements per chunk on ``device``: the element budget over K, at least 1."""
    budget = cpu_elements if torch.device(device).type == "cpu" else device_elements
    return max(1, budget // k)
