"""A test-only re-implementation of the reference DiT (Duo / MDLM ``models/dit.py``).

Written from reading the reference code, independently of ``discdiff.models``: the same module
tree and parameter names, so that ``ReferenceDIT(...).state_dict()`` has the reference's keys
(``vocab_embed.embedding``, ``blocks.i.attn_qkv.weight``, ``output_layer.norm_final.weight``,
``rotary_emb.inv_freq``, ...) and ``parameters()`` its order. What it reproduces:

- LayerNorm: no bias, computed in float32 (``F.layer_norm(x.float())``), eps 1e-5, times weight.
- Rotary: ``inv_freq = 1 / base^(2i/D)`` stored as a buffer; angles ``pos * inv_freq``; applied to
  q and k as flash-attn's non-interleaved ``apply_rotary_emb_torch`` does:
  ``x * [cos, cos] + rotate_half(x) * [sin, sin]``, ``rotate_half(x) = [-x2, x1]`` (halves).
- adaLN: ``Linear(c)`` chunked into (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
  gate_mlp); ``modulate(x) = x * (1 + scale) + shift``; bias-dropout-add-scale
  ``residual + scale * dropout(x)``.
- Attention: flash-attn (bidirectional SDPA, or causal varlen for the AR twin) stood in by the
  softmax attention written out, ``softmax(q k^T / sqrt(D) + mask) v``.
- Timestep embedding: ``[cos(t f), sin(t f)]``, ``f_i = 10000^(-i/half)``, Linear-SiLU-Linear,
  then SiLU outside. Output: LayerNorm, adaLN (shift, scale), Linear.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _namespace(obj: Any) -> Any:
    if isinstance(obj, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in obj.items()})
    return obj


def bias_dropout_add_scale(x: Tensor, scale: Tensor, residual: Tensor, prob: float,
                           training: bool) -> Tensor:  # fmt: skip
    return residual + scale * F.dropout(x, p=prob, training=training)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class LayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones([dim]))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), [self.dim]) * self.weight[None, None, :]


class Rotary(nn.Module):
    def __init__(self, dim: int, base: float = 10_000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (L, D/2) for the positions of x (B, L, ...)."""
        t = torch.arange(x.shape[1], device=x.device).type_as(self.inv_freq)
        freqs = t[:, None] * self.inv_freq[None, :]
        return freqs.cos(), freqs.sin()


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, L, H, D); cos, sin (L, D/2), repeated over both halves of the head."""
    cos = torch.cat((cos, cos), dim=-1)[None, :, None, :]
    sin = torch.cat((sin, sin), dim=-1)[None, :, None, :]
    return x * cos + rotate_half(x) * sin


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """q, k, v (B, L, H, D) -> (B, L, H * D)."""
    b, n, h, d = q.shape
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)
    return out.reshape(b, n, h * d)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class DDiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4,
                 dropout: float = 0.1, causal: bool = False):  # fmt: skip
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout2 = nn.Dropout(dropout)
        if not causal:  # the causal twin (DDiTBlockCausal) has no modulation
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
            self.adaLN_modulation.weight.data.zero_()
            self.adaLN_modulation.bias.data.zero_()

    def forward(self, x: Tensor, rotary_cos_sin: tuple[Tensor, Tensor], c: Tensor | None) -> Tensor:
        b, n, dim = x.shape
        x_skip = x
        x = self.norm1(x)
        one = torch.ones(1, device=x.device, dtype=x.dtype)
        if self.causal:
            gate_msa = gate_mlp = one
        else:
            (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
             gate_mlp) = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)  # fmt: skip
            x = modulate(x, shift_msa, scale_msa)
        qkv = self.attn_qkv(x).view(b, n, 3, self.n_heads, dim // self.n_heads)
        cos, sin = rotary_cos_sin
        q = apply_rotary(qkv[:, :, 0], cos, sin)
        k = apply_rotary(qkv[:, :, 1], cos, sin)
        v = qkv[:, :, 2]
        x = softmax_attention(q, k, v, self.causal)
        x = bias_dropout_add_scale(self.attn_out(x), gate_msa, x_skip, self.dropout, self.training)
        y = self.norm2(x)
        if not self.causal:
            y = modulate(y, shift_mlp, scale_mlp)
        return bias_dropout_add_scale(self.mlp(y), gate_mlp, x, self.dropout, self.training)


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab_dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty((vocab_dim, dim)))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding[x]


class DDiTFinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int, adaLN: bool):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.linear.weight.data.zero_()
        self.linear.bias.data.zero_()
        self.adaLN = adaLN
        if adaLN:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size, bias=True)
            self.adaLN_modulation.weight.data.zero_()
            self.adaLN_modulation.bias.data.zero_()

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        x = self.norm_final(x)
        if self.adaLN:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
            x = modulate(x, shift, scale)
        return self.linear(x)


class DIT(nn.Module):
    """``DIT(config, vocab_size)``; config (a dict or namespace) with ``model.hidden_size``,
    ``model.n_heads``, ``model.n_blocks``, ``model.cond_dim``, ``model.dropout`` and
    ``algo.causal_attention``."""

    def __init__(self, config: Any, vocab_size: int):
        super().__init__()
        config = _namespace(config)
        self.causal = bool(config.algo.causal_attention)
        m = config.model
        dim, cond_dim = m.hidden_size, m.cond_dim
        self.vocab_embed = EmbeddingLayer(dim, vocab_size)
        if not self.causal:
            self.sigma_map = TimestepEmbedder(cond_dim)
        self.rotary_emb = Rotary(dim // m.n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(dim, m.n_heads, cond_dim, dropout=m.dropout, causal=self.causal)
            for _ in range(m.n_blocks)
        )
        self.output_layer = DDiTFinalLayer(dim, vocab_size, cond_dim, adaLN=not self.causal)

    def forward(self, x: Tensor, sigma: Tensor | None) -> Tensor:
        x = self.vocab_embed(x)
        c = None if self.causal else F.silu(self.sigma_map(sigma))
        rotary_cos_sin = self.rotary_emb(x)
        for block in self.blocks:
            x = block(x, rotary_cos_sin, c)
        return self.output_layer(x, c)


def randomize_(model: nn.Module, generator: torch.Generator, scale: float = 0.2) -> nn.Module:
    """Fill every parameter (also the zero-initialised adaLN and output layers) with noise, so
    that every weight shapes the logits; LayerNorm weights around 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * scale
            p.copy_(1 + noise if "norm" in name else noise)
    return model
