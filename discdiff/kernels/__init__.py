"""Fused kernels for the two hot loops of uniform-state diffusion: the loss and the reverse step.

    discdiff.kernels.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_t)
    discdiff.kernels.uniform_ancestral_step(logits, z_t, alpha_s, alpha_t, kappa=, generator=)

On a CUDA tensor, when ``triton`` imports, both run Triton kernels that read the (B, L, K) logits
once (the loss's backward reads them once more and writes their gradient once); elsewhere they
run the library's PyTorch paths. ``backend="torch" | "triton"`` forces one; the Triton kernels
also run on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``), which is how the tests
check them against the PyTorch paths. The choice is ``discdiff.kernels.dispatch``'s one rule,
which ``discdiff.losses`` and ``discdiff.samplers`` apply too: the two entry points here are
``discdiff.losses.uniform_nelbo`` and ``discdiff.samplers.uniform_ancestral_step`` (unfiltered).
This package imports nothing from either: the per-row formulas both backends share live in
``discdiff.numerics``.
"""

from discdiff.kernels.dispatch import triton_available
from discdiff.kernels.nelbo import uniform_nelbo
from discdiff.kernels.step import mixture_weights, uniform_ancestral_step

__all__ = ["mixture_weights", "triton_available", "uniform_ancestral_step", "uniform_nelbo"]
