"""``NoiseLevelEmbedding``: the noise level for a backbone that has no time input.

A Duo model must know how noisy its input is (a uniform-state token looks the same clean or
noised), and most language models have no time input. This module embeds sigma = -log alpha_t
as the DiT does (``discdiff.models.dit.TimestepEmbedder``: sinusoidal features, then an MLP)
into the backbone's hidden size; ``discdiff.adapters.as_denoiser(model, level=...)`` adds it to
the input embeddings. Its last layer starts at zero, so a pre-trained backbone starts exactly
as it was and learns to read the level.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from discdiff.checks import check_count
from discdiff.models.dit import TimestepEmbedder

__all__ = ["NoiseLevelEmbedding"]


class NoiseLevelEmbedding(nn.Module):
    """sigma (B,) or per token (B, L) -> a learned embedding (B, 1, D) or (B, L, D).

    Args:
        hidden_size: D, the width of the backbone's input embeddings.
        frequency_dim: the number of sinusoidal features of sigma (the DiT's 256 by default).
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        check_count(hidden_size, "hidden_size")
        if check_count(frequency_dim, "frequency_dim") % 2:
            raise ValueError(f"frequency_dim must be even (cos and sin pairs), got {frequency_dim}")
        self.hidden_size = hidden_size
        self.embedder = TimestepEmbedder(hidden_size, frequency_dim)
        # Zero output layer: the sum with the backbone's embeddings starts as the backbone's own.
        nn.init.zeros_(self.embedder.mlp[-1].weight)
        nn.init.zeros_(self.embedder.mlp[-1].bias)

    def forward(self, sigma: Float[Tensor, " b"] | Float[Tensor, "b l"]) -> Tensor:
        """The embedding of sigma, (B, 1, D) for one level per sequence, (B, L, D) per token."""
        if not isinstance(sigma, Tensor) or sigma.ndim not in (1, 2):
            got = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
            raise ValueError(f"sigma must be (B,) or per token (B, L), got {got}")
        out = self.embedder(sigma.to(torch.float32))
        return out if out.ndim == 3 else out.unsqueeze(1)
