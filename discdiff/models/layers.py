"""The DiT's layers around its transformer blocks: the noise-level embedding, adaLN modulation
and the output layer (``FinalLayer``, its projection padded to ``padded_rows(K)`` rows).

Shapes: sigma (B,) or (B, L); h ``hidden_size``; c ``cond_dim``; K ``vocab_size``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from discdiff.models.config import DiTConfig
from discdiff.models.projection import output_rows, pad_rows, vocab_projection

__all__ = ["FinalLayer", "TimestepEmbedder", "modulate", "per_position", "sinusoidal_embedding"]


def sinusoidal_embedding(sigma: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(sigma f_i), sin(sigma f_i)], f_i = max_period^(-i / (dim/2)): (...) -> (..., dim)."""
    dtype = torch.float64 if sigma.dtype == torch.float64 else torch.float32
    half = dim // 2
    exponent = torch.arange(half, dtype=dtype, device=sigma.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = sigma.to(dtype).unsqueeze(-1) * freqs  # (..., dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """sigma (B,) or (B, L) -> sinusoidal (..., frequency_dim) -> Linear -> SiLU -> Linear:
    (..., cond_dim)."""

    def __init__(self, cond_dim: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        freq = sinusoidal_embedding(sigma, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift: x (B, L, h), shift and scale (B, 1, h) or (B, L, h)."""
    return torch.addcmul(shift, x, 1 + scale)


def per_position(modulation: Tensor) -> Tensor:
    """adaLN outputs of a per-sequence conditioning (B, m) as (B, 1, m); per-token ones
    (B, L, m) as they are."""
    return modulation if modulation.ndim == 3 else modulation.unsqueeze(1)


class FinalLayer(nn.Module):
    """LayerNorm, adaLN shift/scale (zero-init; none in causal mode), Linear(h, K) zero-init.

    The Linear has ``padded_rows(K)`` output rows unless the weights are tied (see
    ``discdiff.models.dit``'s docstring); only the first K are ever read.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        h = config.hidden_size
        self.vocab_size = config.vocab_size
        rows = output_rows(config)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=False)
        self.linear = nn.Linear(h, config.vocab_size)  # the random stream of an unpadded layer
        if rows > config.vocab_size:  # zero-initialised anyway: padding draws no random numbers
            self.linear.weight = nn.Parameter(torch.zeros(rows, h))
            self.linear.bias = nn.Parameter(torch.zeros(rows))
            self.linear.out_features = rows
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation: nn.Linear | None = None
        if not config.causal:
            self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * h)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)
        self.register_load_state_dict_pre_hook(_pad_loaded_rows)

    @property
    def padding_rows(self) -> int:
        """Rows of the projection past the K classes (0 when tied)."""
        return self.linear.bias.shape[0] - self.vocab_size

    def modulated(self, x: Tensor, c: Tensor | None) -> Tensor:
        """The projection's input (B, L, h): LN(x) * (1 + scale) + shift."""
        x = self.norm(x)  # (B, L, h)
        if self.adaLN_modulation is not None:
            assert c is not None
            shift, scale = per_position(self.adaLN_modulation(c)).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return x

    def projection(self) -> tuple[Tensor, Tensor]:
        """The projection's first K rows: weight (K, h) and bias (K,), views of the parameters."""
        k = self.vocab_size
        return self.linear.weight[:k], self.linear.bias[:k]

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        return vocab_projection(self.modulated(x, c), weight, bias, self.vocab_size)  # (B, L, K)


def _pad_loaded_rows(module: FinalLayer, state: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a projection stored with K rows gets the padding rows (zeros)."""
    pad_rows(state, prefix + "linear.", module.linear.bias.shape[0], module.vocab_size)
