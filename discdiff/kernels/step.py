"""One uniform-state reverse step t -> s (ancestral, or Ψ with κ), never forming a (B, L, K) law.

Concepts §5. With α_ts = α_t / α_s, i = z_t and x̂ = softmax(logits), the ancestral posterior is a
three-part mixture, normalised by N = Kα_t x̂_i + 1 - α_t:

    stay at z_t      (Kα_t x̂_i + α_ts - α_t) / N
    draw from x̂      (α_s - α_t) / N
    draw uniformly   (1 - α_ts)(1 - α_s) / N

The Ψ step mixes it with the forward re-noising of the denoising posterior,
q = κ · posterior + (1 - κ) · (α_s q0 + (1 - α_s)/K), where q0(j) ∝ (α_t [j = i] + (1 - α_t)/K) x̂_j
is itself "stay" (weight α_t x̂_i) or "draw from x̂" (weight (1 - α_t)/K), normalised by
M = α_t x̂_i + (1 - α_t)/K. So Ψ is the same three parts with weights

    stay    κ · posterior_stay + (1 - κ) α_s α_t x̂_i / M
    x̂       κ · posterior_x̂    + (1 - κ) α_s (1 - α_t) / (K M)
    uniform κ · posterior_unif + (1 - κ)(1 - α_s)

Per token the step needs x̂_i (the softmax normaliser), one exact draw from x̂ and O(1) work.

The x̂ draw is exact in both paths. The Triton kernel runs an exponential race in float64 in the
same single pass over the row that forms the normaliser: j* = argmax_j (ℓ_j - log E_j) with
E_j ~ Exp(1) independent has law softmax(ℓ) exactly (P(j* = j) = e^ℓ_j / Σ e^ℓ), whatever the
normaliser, which the race never needs. E_j = -log u_j with u_j = (m + 1/2) 2^-52 from 52 random
bits m (Philox, a key per row); u_j and 1 - u_j are exact in float64 and E_j is taken from
whichever is accurate, so E_j is the inverse CDF of Exp(1) at a 52-bit uniform. Coupled with an
exact race, the winner can change only when the two best keys lie closer than their
perturbation by this grid (about 2^-53 / E of the key, E ~ 1/K for the winner of a flat row) or
by float64 rounding (2^-53 |key|); the gap between the two best keys has a density of at most
about 1, so the law differs from softmax(ℓ) by a total variation of order K · 2^-48 (about 2e-10
at K = 50k, class by class, the tail included). A float32 Gumbel-max instead quantises u to 24
bits, and with it the small E that decide a flat row. The float32 screening of the race keys
changes nothing (see ``triton_kernels._step_kernel``). The mixture weights use x̂[z_t] from a float32
normaliser, as the PyTorch path does (relative error ~1e-7); the PyTorch path
(``discdiff.samplers.steps``) draws x̂ by a two-stage inverse CDF in float64, with the weights
of ``discdiff.numerics.uniform_mixture``.

Randomness: from a ``torch.Generator`` the kernel draws one seed and keys token r's Philox
stream by seed + r (r the flattened B·L index); from a ``RowStream`` (row-wise randomness) token
(b, l) takes the key (key of row b ^ key of the call) + l, a function of (seed, b, call, l)
(``discdiff.samplers.streams``), so row b draws the same numbers whatever the batch. The caller
(``discdiff.samplers.steps``) turns its generator into these keys: ``triton_step`` takes them.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.kernels.dispatch import Backend, entry_point
from discdiff.numerics import mixture_weights
from discdiff.typing import Level, typechecked

__all__ = ["mixture_weights", "triton_step", "uniform_ancestral_step"]


@typechecked
def uniform_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Level,
    alpha_t: Level,
    *,
    kappa: Level | None = None,
    generator: object = None,
    backend: Backend = "auto",
) -> Int[Tensor, "b l"]:
    """Draw z_s ~ q(z_s | z_t, x̂) for one reverse step t -> s (Concepts §5), x̂ = softmax(logits):
    ``discdiff.samplers.uniform_ancestral_step`` without top-k / nucleus filtering.

    Args:
        logits: (B, L, K) denoiser output at (z_t, t).
        z_t: (B, L) current tokens.
        alpha_s, alpha_t: signal levels with 0 <= α_t <= α_s <= 1; floats, 0-d, (B, 1) or (B, L).
        kappa: None for the ancestral step, else the Ψ mixing weight κ in [0, 1] (κ = 1 is
            ancestral): q = κ · posterior + (1 - κ) · (α_s q0 + (1 - α_s)/K), q0 the denoising
            posterior q(z_0 | z_t, x̂). Same shapes as the levels.
        generator: the source of randomness: a ``torch.Generator`` (a seed for the kernel is
            drawn from it), a ``discdiff.samplers.RowStream`` (each row's draws keyed by
            (seed, row): row b of z_s is the same whatever the batch size), or None.
        backend: "auto" (Triton on CUDA when it imports, else PyTorch: the rule of
            ``discdiff.kernels.dispatch``), "torch" or "triton".

    Returns:
        (B, L) int64 tokens z_s. The Triton path reads the logits once; neither path allocates
        anything of size (B, L, K).
    """
    return entry_point("uniform_ancestral_step")(
        logits, z_t, alpha_s, alpha_t, kappa=kappa, generator=generator, backend=backend
    )


def triton_step(
    logits: Tensor, z: Tensor, alpha_s: Tensor | float, alpha_t: Tensor | float,
    kappa: Tensor | float | None, keys: Tensor, row_call: tuple[int, int] | None = None,
) -> Tensor:  # fmt: skip
    """The Triton step on trusted inputs (no checks): logits (n, K), z (n,) int64, levels floats
    or (n,) float64; (n,) int64 z_s. ``keys`` (int64, on the logits' device) key the Philox
    streams: one seed, token r's key is seed + r; or, with ``row_call = (call, L)``, (n / L,)
    keys of the rows, token (b, l)'s key is (keys[b] ^ call) + l (a ``RowStream``'s draw)."""
    from discdiff.kernels import triton_kernels

    n = logits.shape[0]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    device = logits.device

    def rows(level: Tensor | float) -> Tensor:
        return torch.as_tensor(level, dtype=torch.float64, device=device).expand(n).contiguous()

    kap = None if kappa is None else rows(kappa)
    out = torch.empty(n, dtype=torch.int64, device=device)
    levels = (z.contiguous(), rows(alpha_s), rows(alpha_t), kap)
    triton_kernels.ancestral_step(logits, *levels, keys, out, row_call=row_call)
    return out
