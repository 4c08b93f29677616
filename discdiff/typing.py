"""Tensor type aliases, the ``Bag`` input and the ``Denoiser`` protocol.

Shapes are jaxtyping strings: ``b`` batch, ``l`` sequence length, ``k`` vocabulary size.
The argument checks (``typechecked``, the ``check_*`` helpers, ``unchecked`` / ``trusted``)
live in ``discdiff.checks``; they are re-exported here, where they used to live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff import checks as _checks
from discdiff.checks import (
    as_float,
    check_count,
    check_finite,
    check_logits,
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    output_checks_enabled,
    reject_if,
    trusted,
    typechecked,
    unchecked,
)

Tokens = Int[Tensor, "b l"]
"""Token ids, shape (B, L)."""
Logits = Float[Tensor, "b l k"]
"""Unnormalised log-probabilities over the vocabulary, shape (B, L, K)."""
Probs = Float[Tensor, "b l k"]
"""Probabilities over the vocabulary (rows sum to one), shape (B, L, K)."""
Times = Float[Tensor, " b"]
"""One time or noise level per sequence, shape (B,)."""
PerToken = Float[Tensor, "b l"]
"""A per-token quantity (a loss, a weight), shape (B, L)."""
Level = Float[Tensor, "#b #l"] | Float[Tensor, ""] | float | int
"""A signal level alpha_t (or its time derivative dalpha_t): a number, or a tensor that
broadcasts over (B, L): (B, 1) one per sequence, (B, L) one per token."""


@dataclass(frozen=True)
class Bag:
    """A sparse soft input: the top-n token ids of each position and their weights.

    ``ids`` (B, L, n) int64, ``weights`` (B, L, n) float; a denoiser embeds it as the weighted
    sum of the ids' embeddings (an embedding bag). The curriculum's top-k latents use it.
    """

    ids: Int[Tensor, "b l n"]
    weights: Float[Tensor, "b l n"]

    @property
    def shape(self) -> torch.Size:
        """(B, L): the sequence shape, as for token ids."""
        return self.ids.shape[:2]


DenoiserInput = Tokens | Probs | Bag
"""What a denoiser receives: token ids (B, L), soft inputs (B, L, K) or a ``Bag``."""


@runtime_checkable
class Denoiser(Protocol):
    """Anything that maps a noisy sequence and a noise level to logits over the clean token.

    ``z_t`` is token ids (B, L), soft inputs (B, L, K) (the curriculum's relaxed latent), or a
    top-n ``Bag``. ``sigma`` is the noise level -log(alpha_t), (B,) float32. ``cond`` is the
    caller's conditioning (class labels, padding masks), passed through untouched. Returns
    logits (B, L, K). No base class: a bare ``nn.Module`` or a lambda fits
    (``discdiff.adapters.as_denoiser`` wraps a model that is called otherwise).

    Optional attributes: ``reads_token_levels = True`` (it reads sigma (B, L), 0 at clean
    context: ``discdiff.context``) and ``parameterization`` ("x_hat", the default, or
    "posterior": what its logits mean for the uniform process, ``discdiff.parameterization``).
    """

    def __call__(self, z_t: DenoiserInput, sigma: Times, **cond: Any) -> Logits: ...


def __getattr__(name: str) -> Any:
    # ``host_checks`` is counted per thread in discdiff.checks; read it there on every access.
    if name == "host_checks":
        return _checks.host_check_count()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bag",
    "as_float",
    "check_count",
    "reject_if",
    "Denoiser",
    "DenoiserInput",
    "Level",
    "Logits",
    "PerToken",
    "Probs",
    "Times",
    "Tokens",
    "check_finite",
    "check_logits",
    "check_range",
    "check_tokens",
    "check_vocab_size",
    "checks_enabled",
    "output_checks_enabled",
    "trusted",
    "typechecked",
    "unchecked",
]
