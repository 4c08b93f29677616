"""The one seam between the library and a user's backbone.

Every call of a denoiser in discdiff goes through ``denoise``: it turns the signal level alpha_t
into the noise level sigma = -log(alpha_t) that the denoiser sees (``noise_level``, the only
place that formula lives), calls ``denoiser(z_t, sigma, **cond)`` with the caller's
conditioning mapping, and checks the output once: a float (B, L, K) tensor without NaN.
Samplers, losses and distillers trust the logits they get from here: the check is one
reduction, and on an accelerator an asynchronous assertion (no host sync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from discdiff.typing import Denoiser, DenoiserInput, output_checks_enabled, reject_if

__all__ = ["denoise", "noise_level"]


def noise_level(alpha_t: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """sigma = -log(alpha_t) as float32 (B,): +inf at alpha_t = 0, 0 at alpha_t = 1.

    ``alpha_t`` is a float, a 0-d tensor, (B,) or (B, 1) (one level per sequence: the
    denoisers' time conditioning is per sequence). Computed in float64 before the cast.
    """
    alpha = torch.as_tensor(alpha_t, dtype=torch.float64, device=device).reshape(-1)
    sigma = -torch.log(alpha.clamp(min=0.0, max=1.0))
    return sigma.to(torch.float32).expand(batch_size).contiguous()


def denoise(
    denoiser: Denoiser,
    z_t: DenoiserInput,
    sigma: Tensor,
    *,
    vocab_size: int,
    cond: Mapping[str, Any] | None = None,
    role: str = "denoiser",
) -> Tensor:
    """``denoiser(z_t, sigma, **cond)``, checked once: float logits (B, L, vocab_size), no NaN.

    ``z_t`` is token ids (B, L), soft inputs (B, L, K) or a ``Bag``; ``sigma`` (B,) float32 from
    ``noise_level``; ``cond`` the caller's conditioning, apart from any sampler or loss option.
    ``role`` names the callable in errors ("teacher", "student").
    """
    if not callable(denoiser):
        raise TypeError(
            f"{role} must be a denoiser: a callable (z_t, sigma, **cond) -> logits (B, L, K), "
            f"got {type(denoiser).__name__}"
        )
    if cond is not None and not isinstance(cond, Mapping):
        raise TypeError(
            "cond must be a mapping of the denoiser's keyword arguments (e.g. {'label': y}), "
            f"got {type(cond).__name__}"
        )
    logits = denoiser(z_t, sigma, **(cond or {}))
    b, length = z_t.shape[0], z_t.shape[1]
    expected = (b, length, vocab_size)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        hint = ""
        if isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[:2] == (b, length):
            hint = (
                f": it returns {logits.shape[-1]} classes but vocab_size={vocab_size}; give the "
                "diffusion, distiller or sampler the vocab_size the model was built for "
                "(a masked model returns K + 1 logits: MaskedDiffusion(K), mask id K)"
            )
        raise ValueError(f"{role} returned logits of shape {got}, expected (B, L, K) = {expected}"
                         + hint)
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{role} returned {logits.dtype} logits; expected a float dtype")
    if output_checks_enabled() and logits.numel() > 0:
        # One pass, no (B, L, K) mask: a row maximum is NaN if the row holds a NaN (max
        # propagates it), +inf for +inf, and -inf when no class is possible.
        top = logits.detach().amax(-1)
        reject_if(
            ~torch.isfinite(top),
            f"{role} returned logits with NaN or +inf values, or a row with no finite class",
        )
    return logits
