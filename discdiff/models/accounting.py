"""Sizes of a DiT: parameter counts by part and matmul FLOPs per token (for MFU).

The counts read the model's parameters by name (``embed.``, ``sigma_map.``, ``label_embed.``,
``blocks.``, ``final.``, ``adaLN_modulation``) and its config; they take the model as a plain
``nn.Module``, so this module never imports the DiT (whose methods call it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from discdiff.models.config import DiTConfig

__all__ = ["ParamCount", "flops_per_token", "num_parameters", "param_count"]

_PROJECTION = ("final.linear.weight", "final.linear.bias")  # (R, h) and (R,): R - K padding rows


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


def _part(name: str) -> str:
    """The ``ParamCount`` field a DiT parameter belongs to, from its name."""
    if name.startswith(("sigma_map.", "label_embed.")) or ".adaLN_modulation." in name:
        return "conditioning"
    for prefix, part in (("embed.", "embedding"), ("blocks.", "blocks"), ("final.", "output")):
        if name.startswith(prefix):
            return part
    raise ValueError(f"parameter {name!r} belongs to no part of a DiT (embed, sigma_map, "
                     "label_embed, blocks, final): is the model a discdiff DiT?")  # fmt: skip


def _parts(model: nn.Module, config: DiTConfig) -> dict[str, int]:
    """Parameters by part; ``named_parameters`` yields a tied weight once (as ``embed.weight``,
    registered first), and of the output projection only the K rows ever read are counted."""
    parts = dict.fromkeys(("embedding", "conditioning", "blocks", "output"), 0)
    for name, p in model.named_parameters():
        parts[_part(name)] += p[: config.vocab_size].numel() if name in _PROJECTION else p.numel()
    return parts


def num_parameters(model: nn.Module, config: DiTConfig, exclude_embedding: bool = False) -> int:
    """Number of distinct parameters of the DiT ``model`` built from ``config`` (tied weights
    once, padding rows not at all); optionally without the input embedding."""
    parts = _parts(model, config)
    return sum(parts.values()) - (parts["embedding"] if exclude_embedding else 0)


def param_count(model: nn.Module, config: DiTConfig) -> ParamCount:
    """Parameters of the DiT ``model`` built from ``config``, by part; see ``ParamCount``."""
    parts = _parts(model, config)
    return ParamCount(total=sum(parts.values()), **parts)


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
