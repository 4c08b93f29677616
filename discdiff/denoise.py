"""The one seam between the library and a user's backbone.

Every call of a denoiser in discdiff goes through ``denoise``: it turns the signal level alpha_t
into the noise level sigma = -log(alpha_t) that the denoiser sees (``noise_level``, the only
place that formula lives), calls ``denoiser(z_t, sigma, **cond)`` with the caller's
conditioning mapping, and checks the output once: a float (B, L, K) tensor without NaN.
Samplers, losses and distillers trust the logits they get from here: the check is one
reduction, and on an accelerator an asynchronous assertion (no host sync).

A denoiser may also offer the ``FusedHead`` protocol: its last hidden state and its output
projection, so that a training loss can be computed from them without ever holding the
(B, L, K) logits (``discdiff.losses.fused``). ``denoise_head`` is the seam for that call, with
the same checks on the hidden state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from discdiff.typing import Denoiser, DenoiserInput, Times, output_checks_enabled, reject_if

__all__ = ["FusedHead", "Head", "denoise", "denoise_head", "has_fused_head", "noise_level"]


@runtime_checkable
class FusedHead(Protocol):
    """A denoiser that exposes what its output layer is made of, so that a loss can be fused
    with it: ``denoiser(z_t, sigma, **cond) == hidden @ weight.T + bias`` with

    - ``hidden_states(z_t, sigma, **cond)`` -> (B, L, D): the input of the vocabulary projection
      (for the DiT: after the final norm and adaLN modulation), in the dtype the projection's
      matmul would see;
    - ``output_projection()`` -> (weight (K, D), bias (K,) or None): exactly K rows, the
      logits' classes, as views of the live parameters (gradients flow to them). Called right
      after ``hidden_states``.

    No base class: any module with the two methods fits. ``discdiff.models.DiT`` implements it.
    A ``torch.compile`` wrapper does not count (its methods are not compiled; compile in place
    with ``model.compile()``), nor does a DDP wrapper (its forward must run).
    """

    def hidden_states(self, z_t: DenoiserInput, sigma: Times, **cond: Any) -> Tensor: ...

    def output_projection(self) -> tuple[Tensor, Tensor | None]: ...


def has_fused_head(denoiser: Any) -> bool:
    """Whether a loss goes through ``denoise_head`` for this denoiser (see ``FusedHead``).

    Not while ``torch.compile`` traces the loss itself: the fused loss's block loop is for eager
    execution (compile the model in place instead), and a traced step sees the logits.
    """
    if torch.compiler.is_compiling():
        return False
    if isinstance(denoiser, torch.nn.Module) and hasattr(denoiser, "_orig_mod"):
        return False  # torch.compile's wrapper: only its __call__ is compiled
    return isinstance(denoiser, FusedHead)


@dataclass(frozen=True)
class Head:
    """The last hidden state (B, L, D) and the output projection (K, D), (K,) or None."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None


def noise_level(alpha_t: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """sigma = -log(alpha_t) as float32 (B,): +inf at alpha_t = 0, 0 at alpha_t = 1.

    ``alpha_t`` is a float, a 0-d tensor, (B,) or (B, 1) (one level per sequence: the
    denoisers' time conditioning is per sequence). Computed in float64 before the cast.
    """
    alpha = torch.as_tensor(alpha_t, dtype=torch.float64, device=device).reshape(-1)
    sigma = -torch.log(alpha.clamp(min=0.0, max=1.0))
    return sigma.to(torch.float32).expand(batch_size).contiguous()


def _check_call(denoiser: Any, cond: Any, role: str) -> None:
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
    _check_call(denoiser, cond, role)
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


def denoise_head(
    denoiser: FusedHead,
    z_t: DenoiserInput,
    sigma: Tensor,
    *,
    vocab_size: int,
    cond: Mapping[str, Any] | None = None,
    role: str = "denoiser",
) -> Head:
    """``denoiser.hidden_states(z_t, sigma, **cond)`` and ``denoiser.output_projection()``,
    checked once: a float (B, L, D) hidden state without NaN or inf, a (vocab_size, D) weight
    and a (vocab_size,) bias or None. The logits ``hidden @ weight.T + bias`` are not formed.
    """
    _check_call(denoiser, cond, role)
    hidden = denoiser.hidden_states(z_t, sigma, **(cond or {}))
    weight, bias = denoiser.output_projection()
    b, length = z_t.shape[0], z_t.shape[1]
    if not isinstance(hidden, Tensor) or hidden.ndim != 3 or hidden.shape[:2] != (b, length):
        got = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"{role}.hidden_states returned {got}, expected (B, L, D) with "
                         f"(B, L) = {(b, length)}")  # fmt: skip
    if not hidden.dtype.is_floating_point:
        raise ValueError(f"{role}.hidden_states returned {hidden.dtype}; expected a float dtype")
    d = hidden.shape[-1]
    if not isinstance(weight, Tensor) or tuple(weight.shape) != (vocab_size, d):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{role}.output_projection() returned a weight of shape {got}, expected (K, D) = "
            f"{(vocab_size, d)} (exactly the K classes of the logits, no padding rows)"
        )
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (vocab_size,)):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{role}.output_projection() returned a bias of shape {got}, "
                         f"expected (K,) = ({vocab_size},) or None")  # fmt: skip
    if output_checks_enabled() and hidden.numel() > 0:
        # One pass over (B, L, D), D << K: amax propagates NaN, and |h| catches both infinities.
        top = hidden.detach().abs().amax(-1)
        reject_if(~torch.isfinite(top), f"{role} returned a hidden state with NaN or inf values")
    return Head(hidden, weight, bias)
