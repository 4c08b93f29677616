"""Hyper-parameters of a DiT (``DiTConfig``) and the paper's model sizes (``PRESETS``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from discdiff.typing import check_vocab_size

__all__ = ["PRESETS", "DiTConfig"]

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 256, "n_blocks": 8, "n_heads": 8},
    "small": {"hidden_size": 768, "n_blocks": 12, "n_heads": 12},
    "medium": {"hidden_size": 1024, "n_blocks": 24, "n_heads": 16},
}
"""Sizes of the paper's models (cond_dim 128 for all)."""


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of a DiT; stored as ``config.json`` next to the weights.

    ``mlp_ratio``: MLP width / hidden size. ``frequency_dim``: size of the sinusoidal embedding
    of sigma. ``rotary_base``: base of the rotary frequencies. Rotary embeddings need no maximum
    sequence length. ``tie_weights`` shares the output projection's weight with the input
    embedding (the output projection is then not zero-initialised, only its bias).
    ``num_classes``: class labels the (non-causal) model is conditioned on, for classifier-free
    guidance: a label embedding of ``num_classes + 1`` rows (the last one the null label) is
    added to the noise-level conditioning (None: no labels). ``block_size``: b, the block size
    of a block-diffusion model (BD3-LM, Arriola et al. 2025: trained on [z_t ; x_0] with the
    block mask, sampled block by block over a KV cache of the clean blocks); None is the
    ordinary bidirectional model. Not with ``causal``. Adds no weights: any checkpoint loads
    with any block size.
    """

    vocab_size: int
    hidden_size: int
    n_blocks: int
    n_heads: int
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    causal: bool = False
    tie_weights: bool = False
    frequency_dim: int = 256
    rotary_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    num_classes: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        check_vocab_size(self.vocab_size)
        positive = ("hidden_size", "n_blocks", "n_heads", "cond_dim", "mlp_ratio", "frequency_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {self.head_dim}")
        if self.frequency_dim % 2:
            raise ValueError(f"frequency_dim must be even, got {self.frequency_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.rotary_base <= 1.0:
            raise ValueError(f"rotary_base must exceed 1, got {self.rotary_base}")
        if self.layer_norm_eps <= 0.0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.num_classes is not None:
            n = self.num_classes
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"num_classes must be a positive integer or None, got {n!r}")
            if self.causal:
                raise ValueError("num_classes needs a diffusion DiT: the causal twin has no "
                                 "conditioning to add a label embedding to")  # fmt: skip
        if self.block_size is not None:
            b = self.block_size
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise ValueError(f"block_size must be a positive integer or None, got {b!r}")
            if self.causal:
                raise ValueError("block_size needs a diffusion DiT (causal=False): the causal "
                                 "twin reads no noise levels, so no block to denoise")  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.mlp_ratio * self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)
