"""Sizes of a DiT: parameter counts by part and matmul FLOPs per token (for MFU)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from discdiff.models.config import DiTConfig

if TYPE_CHECKING:
    from discdiff.models.dit import DiT  # the model imports this module

__all__ = ["ParamCount", "flops_per_token", "num_parameters", "param_count"]


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a DiT by part (tied weights counted once, in ``embedding``; the output
    projection's padding rows, never read, not counted).

    ``conditioning``: sigma embedder, label embedding and every adaLN modulation layer (applied
    once per sequence).
    ``blocks``: per-token parameters of the transformer blocks (norms, attention, MLP).
    ``output``: final norm and output projection (its weight only when untied).
    """

    total: int
    embedding: int
    conditioning: int
    blocks: int
    output: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _padding(model: DiT) -> int:
    """Parameters in the output projection's padding rows (weight and bias)."""
    return model.final.padding_rows * (model.config.hidden_size + 1)


def num_parameters(model: DiT, exclude_embedding: bool = False) -> int:
    """Number of distinct parameters (tied weights once, padding rows not at all); optionally
    without the input embedding."""
    total = _count(model) - _padding(model)
    return total - model.embed.weight.numel() if exclude_embedding else total


def param_count(model: DiT) -> ParamCount:
    """Parameters of ``model`` by part; see ``ParamCount``."""
    modulation = sum(_count(block.adaLN_modulation) for block in model.blocks)
    conditioning = (_count(model.sigma_map) + _count(getattr(model, "label_embed", None))
                    + _count(model.final.adaLN_modulation) + modulation)  # fmt: skip
    blocks = sum(_count(block) for block in model.blocks) - modulation
    embedding = model.embed.weight.numel()
    k = model.config.vocab_size
    output = _count(model.final.norm) + k  # the bias's K entries
    if not model.config.tie_weights:
        output += k * model.config.hidden_size
    total = num_parameters(model)
    assert total == embedding + conditioning + blocks + output
    return ParamCount(total, embedding, conditioning, blocks, output)


def flops_per_token(
    config: DiTConfig, seq_len: int, *, training: bool = True, soft_input: bool = False
) -> int:
    """Matmul FLOPs per token, for MFU: 6 N + 12 n_blocks L h when training (fwd + bwd),
    2 N + 4 n_blocks L h for a forward pass.

    N = the weights applied per token as matrix products: per block qkv (3h^2), attention
    output (h^2) and MLP (2 h m), plus the output projection (h K); with ``soft_input`` also
    the input embedding (K h, a matmul p @ E). Lookups, norms, biases, elementwise work and the
    per-sequence conditioning (sigma MLP, adaLN) are left out. The attention term counts
    QK^T and AV over all L keys (2 * 2 L h per token and block), also for causal masks.
    """
    h, m = config.hidden_size, config.mlp_dim
    n = config.n_blocks * (4 * h * h + 2 * h * m) + h * config.vocab_size
    if soft_input:
        n += h * config.vocab_size
    per_pass = 2 * n + 4 * config.n_blocks * seq_len * h
    return 3 * per_pass if training else per_pass
