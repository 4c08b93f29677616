"""When a training loss is computed from the last hidden state (the fused head) or from the logits.

The fused head (``discdiff.losses.fused``) never holds the (B·L, K) logits, and with a reduced
loss ("sum" / "mean") it forms the gradient in the forward pass: the same arithmetic as the
materialised path, in blocks. With per-token losses ("none") its backward recomputes every
block's logits: one more output-layer matmul. Measured on the CPU (one thread, the output layer
and the uniform NELBO forward + backward; ``python -m benchmarks.bench_loss_step --crossover``
at D = 256, ``python -m benchmarks.bench_fused`` at D = 768), fused time over materialised time:

    D     rows x K (logits)     reduced       per-token
    256   2.6e5 - 1.3e7         0.98 - 1.19   1.01 - 1.50
    256   1.7e7 - 2.1e8         0.87 - 0.99   1.20 - 1.34
    768   5.1e7 (1024 x 50257)  0.91 - 1.26   1.31 - 1.61   (four runs, median 1.06 / 1.42)

At D = 256 the reduced fused loss stops losing at about 2^24 = 16.8M logits; at D = 768 it does
not win consistently at 5.1e7 (each block adds its share into the whole (K, D) weight gradient, a
cost that grows with D), and per token it always loses while the logits fit in memory. The gain
where it wins is at most ~13 %, the loss where it loses up to ~26 % (these runs were on a shared,
loaded machine): so on the CPU the rule does not take it for speed. On an accelerator the reduced
fused loss reads each block of logits while it is in cache (the Triton kernels on CUDA) and saves
the logits' memory: it is taken at every size.

The rule (``fused_head_pays``): fused when the loss is reduced and rows x K >= the device's
crossover (``CROSSOVER_LOGITS``: never on the CPU, 0 on accelerators), or whenever the logits and
their gradient (2 x rows x K x ``element_bytes``) would exceed the device's memory budget
(``LOGITS_BUDGET_BYTES``: 4 GiB on the CPU, 2 GiB on accelerators), reduced or not.
``fused=True`` / ``False`` in the diffusions' ``loss`` overrides it.

How this composes with the Triton-vs-PyTorch choice: this rule only decides how the logits are
produced (materialised by the denoiser, or block by block from its hidden state). Which
implementation then computes each row's loss is ``discdiff.kernels.dispatch.use_triton``'s
rule, the only place that choice is made: ``discdiff.losses.uniform_nelbo`` applies it to the
materialised logits, ``fused_linear_uniform_nelbo`` to each block. So on CUDA both paths of
``UniformDiffusion.loss`` run the Triton NELBO, whatever the denoiser.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from discdiff.denoise import has_fused_head
from discdiff.typing import check_count

__all__ = ["CROSSOVER_LOGITS", "LOGITS_BUDGET_BYTES", "fused_head_pays", "use_fused_head"]

CROSSOVER_LOGITS: dict[str, float] = {"cpu": math.inf}
"""Rows x K from which the reduced fused loss is taken for speed, per device type (the CPU: never,
see above); device types not listed: 0 (always)."""

LOGITS_BUDGET_BYTES = {"cpu": 4 << 30}
"""Bytes the materialised logits and their gradient may take, per device type; others: 2 GiB."""

_DEFAULT_BUDGET = 2 << 30


def fused_head_pays(
    rows: int,
    vocab_size: int,
    device: torch.device | str,
    *,
    reduced: bool,
    element_bytes: int = 4,
) -> bool:
    """Whether a loss over ``rows`` tokens of a ``vocab_size``-class output layer on ``device``
    should take the fused head (see the module's rule): the reduced loss from the crossover on,
    any loss whose logits and their gradient (``element_bytes`` each, 4 for float32) would
    exceed the device's budget."""
    rows = check_count(rows, "rows", minimum=0)
    vocab_size = check_count(vocab_size, "vocab_size")
    kind = torch.device(device).type
    logits = rows * vocab_size
    if 2 * logits * element_bytes > LOGITS_BUDGET_BYTES.get(kind, _DEFAULT_BUDGET):
        return True
    return reduced and logits >= CROSSOVER_LOGITS.get(kind, 0)


def use_fused_head(
    denoiser: Any, fused: Any, rows: int, vocab_size: int, device: torch.device, reduction: str
) -> bool:
    """The diffusions' one dispatch: ``fused`` True / False forces the path (True only where the
    denoiser offers ``discdiff.denoise.FusedHead``); None applies ``fused_head_pays``."""
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused must be None (the library's rule), True or False, got {fused!r}")
    if not has_fused_head(denoiser):
        return False
    if fused is not None:
        return fused
    return fused_head_pays(rows, vocab_size, device, reduced=reduction != "none")
