"""The reference diffusion transformer (DiT) of MDLM / Duo, and its causal autoregressive twin.

Notation: ``z_t`` the noisy input (token ids (B, L), soft probabilities (B, L, K) or a top-n bag
``(ids, weights)`` each (B, L, n)); ``sigma`` = -log(alpha_t), one noise level per sequence (B,);
K ``vocab_size``; h ``hidden_size``; H ``n_heads``; D = h / H the head size.

Architecture (one file, nanoGPT style):

    e = embed(z_t)                               ids: E[z]; soft: p @ E; bag: sum_n w_n E[id_n]
    c = SiLU(MLP(sinusoidal_256(sigma)))         (B, cond_dim); absent in causal mode
    per block:  x += gate_a * Attn(LN(x) * (1 + scale_a) + shift_a)      rotary q, k; fused qkv
                x += gate_m * MLP(LN(x) * (1 + scale_m) + shift_m)       GELU(tanh), 4h
                (shift, scale, gate) = Linear(c) zero-initialised (adaLN-zero)
    logits = Linear(LN(x) * (1 + scale_f) + shift_f)                     zero-initialised

At initialisation every block is the identity on the residual stream and the logits are zero.

The causal twin (``causal=True``: the autoregressive baseline and evaluator LM) has no noise
conditioning at all: no sigma embedder and no adaLN layers, plain pre-LayerNorm residual blocks
(``x += Attn(LN(x))``), causal attention and an optional KV cache for decoding. ``sigma`` is
ignored there.

Attention runs on flash-attn when it is installed, the tensors live on CUDA and are fp16/bf16,
otherwise on ``torch.nn.functional.scaled_dot_product_attention``. flash-attn is imported lazily
by the first eager forward on CUDA (or by ``flash_attn_available()``), never at module import.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from discdiff.typing import (
    Bag,
    Logits,
    Probs,
    Times,
    Tokens,
    check_finite,
    check_tokens,
    check_vocab_size,
    typechecked,
)

__all__ = [
    "PRESETS",
    "DiT",
    "DiTConfig",
    "KVCache",
    "ParamCount",
    "flash_attn_available",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 256, "n_blocks": 8, "n_heads": 8},
    "small": {"hidden_size": 768, "n_blocks": 12, "n_heads": 12},
    "medium": {"hidden_size": 1024, "n_blocks": 24, "n_heads": 16},
}
"""Sizes of the paper's models (cond_dim 128 for all)."""

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of a DiT; stored as ``config.json`` next to the weights.

    ``mlp_ratio``: MLP width / hidden size. ``frequency_dim``: size of the sinusoidal embedding
    of sigma. ``rotary_base``: base of the rotary frequencies. Rotary embeddings need no maximum
    sequence length. ``tie_weights`` shares the output projection's weight with the input
    embedding (the output projection is then not zero-initialised, only its bias).
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


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a DiT by part (tied weights counted once, in ``embedding``).

    ``conditioning``: sigma embedder and every adaLN modulation layer (applied once per sequence).
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


class KVCache:
    """Keys and values of the positions already decoded, one pair per block (causal mode only).

    Pass the same cache to successive calls: ``model(prompt, kv_cache=cache)`` then
    ``model(next_ids, kv_cache=cache)``; each call attends to everything cached before it and
    appends its own positions. ``length`` is the number of cached positions, the rotary offset of
    the next call. Storage per block is (B, capacity, H, D), preallocated to ``max_len`` when given,
    otherwise grown by doubling. Meant for inference (under ``torch.no_grad()``).
    """

    def __init__(self, max_len: int | None = None):
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.max_len = max_len
        self.length = 0
        self._keys: list[Tensor] = []
        self._values: list[Tensor] = []

    def reset(self) -> None:
        """Forget every cached position (storage is kept for reuse)."""
        self.length = 0

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` cached positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (B, n, H, D) at positions [length, length + n) of block ``layer``.

        Returns all keys and values of that block, (B, length + n, H, D) each. ``length`` itself
        advances only when the model calls ``advance`` after its last block.
        """
        start, end = self.length, self.length + k.shape[1]
        if layer > len(self._keys):
            raise ValueError(f"blocks must fill the cache in order; got block {layer} first")
        if layer == len(self._keys):
            capacity = max(end, self.max_len or 0)
            shape = (k.shape[0], capacity, k.shape[2], k.shape[3])
            self._keys.append(k.new_empty(shape))
            self._values.append(v.new_empty(shape))
        keys, values = self._keys[layer], self._values[layer]
        if keys.shape[0] != k.shape[0] or keys.shape[2:] != k.shape[2:]:
            raise ValueError(
                f"the cache holds (batch, heads, head_dim) = ({keys.shape[0]}, {keys.shape[2]}, "
                f"{keys.shape[3]}), the input has ({k.shape[0]}, {k.shape[2]}, {k.shape[3]})"
            )
        if end > keys.shape[1]:
            capacity = max(end, 2 * keys.shape[1])
            grown_k = keys.new_empty((keys.shape[0], capacity, *keys.shape[2:]))
            grown_v = values.new_empty(grown_k.shape)
            grown_k[:, :start] = keys[:, :start]
            grown_v[:, :start] = values[:, :start]
            self._keys[layer], self._values[layer] = keys, values = grown_k, grown_v
        keys[:, start:end] = k
        values[:, start:end] = v
        return keys[:, :end], values[:, :end]

    def advance(self, n: int) -> None:
        self.length += n


# flash-attn: None = not looked up yet, False = unavailable, else the module.
_flash_attn: Any = None


def flash_attn_available() -> bool:
    """Import flash-attn on first use (cached); True when it is importable."""
    global _flash_attn
    if _flash_attn is None:
        try:
            import flash_attn  # lazy on purpose: optional, CUDA only, slow to import

            _flash_attn = flash_attn
        except Exception:  # ImportError, or a build that fails to load its CUDA library
            _flash_attn = False
    return _flash_attn is not False


def _use_flash(q: Tensor, backend: str) -> bool:
    if backend == "sdpa" or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        if backend == "flash":
            raise RuntimeError("attention backend 'flash' needs fp16/bf16 CUDA tensors")
        return False
    # Inside torch.compile the lookup is not traced: the state of the last eager call is used.
    available = _flash_attn not in (None, False)
    if backend == "flash" and not available:
        raise RuntimeError("attention backend 'flash' requested but flash-attn is not importable")
    return available and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, backend: str = "auto") -> Tensor:
    """Multi-head attention, q (B, Lq, H, D), k and v (B, Lk, H, D) -> (B, Lq, H, D).

    In causal mode with Lq < Lk the queries are the last Lq positions (decoding with a cache):
    query i attends to keys j <= Lk - Lq + i.
    """
    if _use_flash(q, backend):
        # flash-attn >= 2.1 aligns the causal mask bottom-right, as required for Lq < Lk.
        return _flash_attn.flash_attn_func(q, k, v, causal=causal)
    n_q, n_k = q.shape[1], k.shape[1]
    mask = None
    is_causal = causal and n_q == n_k
    if causal and 1 < n_q < n_k:
        rows = torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q)
        mask = torch.arange(n_k, device=q.device)[None, :] <= rows
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal
    )
    return out.transpose(1, 2)


def sinusoidal_embedding(sigma: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos(sigma f_i), sin(sigma f_i)], f_i = max_period^(-i / (dim/2)): (B,) -> (B, dim)."""
    dtype = torch.float64 if sigma.dtype == torch.float64 else torch.float32
    half = dim // 2
    exponent = torch.arange(half, dtype=dtype, device=sigma.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = sigma.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotary_tables(
    length: int, offset: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles of positions offset..offset+length-1, (L, D/2) each."""
    positions = torch.arange(offset, offset + length, device=device, dtype=dtype)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the halves of the last axis (GPT-NeoX layout); x (B, L, ..., D), cos/sin (L, D/2).

    Computed in the tables' precision (at least float32) and returned in x's dtype.
    """
    shape = (cos.shape[0],) + (1,) * (x.ndim - 3) + (cos.shape[1],)
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """sigma (B,) -> sinusoidal (B, frequency_dim) -> Linear -> SiLU -> Linear: (B, cond_dim)."""

    def __init__(self, cond_dim: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        freq = sinusoidal_embedding(sigma, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)


class DiTBlock(nn.Module):
    """Pre-LayerNorm transformer block with adaLN-zero modulation (none in causal mode)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        h = config.hidden_size
        self.n_heads = config.n_heads
        self.causal = config.causal
        self.norm1 = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=False)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.attn_out = nn.Linear(h, h, bias=False)
        self.norm2 = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(h, config.mlp_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.mlp_dim, h),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.adaLN_modulation: nn.Linear | None = None
        if not config.causal:
            self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * h)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(
        self,
        x: Tensor,
        c: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        kv_cache: KVCache | None,
        layer: int,
        backend: str,
    ) -> Tensor:
        if self.adaLN_modulation is None:  # causal twin: a plain pre-LayerNorm block
            x = x + self.dropout(self._attend(self.norm1(x), cos, sin, kv_cache, layer, backend))
            return x + self.dropout(self.mlp(self.norm2(x)))
        assert c is not None
        modulation = self.adaLN_modulation(c)[:, None, :]  # (B, 1, 6h)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6, dim=-1)
        y = self._attend(
            _modulate(self.norm1(x), shift_a, scale_a), cos, sin, kv_cache, layer, backend
        )
        x = x + gate_a * self.dropout(y)
        y = self.mlp(_modulate(self.norm2(x), shift_m, scale_m))
        return x + gate_m * self.dropout(y)

    def _attend(
        self,
        y: Tensor,
        cos: Tensor,
        sin: Tensor,
        kv_cache: KVCache | None,
        layer: int,
        backend: str,
    ) -> Tensor:
        """Self-attention of the normalised stream y (B, L, h), output projection included."""
        b, n, h = y.shape
        qkv = self.qkv(y).view(b, n, 3, self.n_heads, h // self.n_heads)
        qk = apply_rotary(qkv[:, :, :2], cos, sin)
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        return self.attn_out(
            attention(q, k, v, causal=self.causal, backend=backend).reshape(b, n, h)
        )


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )


class _VocabProjection(torch.autograd.Function):
    """x @ W^T + b for a wide W (K, h), computed in blocks of W's rows on the CPU.

    One MKL GEMM writing a (N, K) row-major output with K ~ 50k runs ~30 % below its usual rate
    (measured: tiny, N = 256, K = 50258, one thread); blocks of a few hundred vocabulary rows keep
    the weight block in cache. Same result bit for bit: every logit is the same length-h dot
    product. The backward is the plain one (its GEMMs already run at full rate).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        k, h = weight.shape
        flat = x.reshape(-1, h)
        out = flat.new_empty(flat.shape[0], k)
        block = max(256, min(1024, 2**17 // h))  # ~0.5 MB of float32 weights
        for start in range(0, k, block):
            end = min(start + block, k)
            torch.addmm(bias[start:end], flat, weight[start:end].t(), out=out[:, start:end])
        return out.view(*x.shape[:-1], k)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        k, h = weight.shape
        flat_grad = grad.reshape(-1, k)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(flat_grad, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(flat_grad.t(), x.reshape(-1, h))
        if ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b


def vocab_projection(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear(x, weight, bias)``; on the CPU outside autocast and compile, blockwise."""
    if (
        x.device.type != "cpu"
        or torch.compiler.is_compiling()
        or _autocast_on("cpu")
        or not (x.dtype == weight.dtype == bias.dtype)
        or weight.shape[0] < 4096
    ):
        return F.linear(x, weight, bias)
    return _VocabProjection.apply(x, weight, bias)


class FinalLayer(nn.Module):
    """LayerNorm, adaLN shift/scale (zero-init; none in causal mode), Linear(h, K) zero-init."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        h = config.hidden_size
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=False)
        self.linear = nn.Linear(h, config.vocab_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation: nn.Linear | None = None
        if not config.causal:
            self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * h)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        x = self.norm(x)
        if self.adaLN_modulation is not None:
            assert c is not None
            shift, scale = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        return vocab_projection(x, self.linear.weight, self.linear.bias)


class DiT(nn.Module):
    """Diffusion transformer denoiser ``DiT(config)(z_t, sigma) -> logits (B, L, K)``.

    Satisfies ``discdiff.typing.Denoiser``. Build one with ``DiT.from_preset("small",
    vocab_size=K)`` or ``DiT(DiTConfig(...))``; ``causal=True`` gives the autoregressive twin.

    Logits are in the parameters' dtype (float32 for a float32 model), or in the autocast dtype
    (e.g. bfloat16) when called under ``torch.autocast``; losses should upcast as they need.
    The residual stream stays in the parameters' dtype under autocast.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.attention_backend = "auto"
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.sigma_map = (
            None if config.causal else TimestepEmbedder(config.cond_dim, config.frequency_dim)
        )
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.n_blocks))
        self.final = FinalLayer(config)
        if config.tie_weights:
            self.final.linear.weight = self.embed.weight

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides: Any) -> DiT:
        """A model of the paper's sizes: "tiny" (256/8/8), "small" (768/12/12), "medium"
        (1024/24/16) as hidden size / blocks / heads. ``overrides`` set any DiTConfig field."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(DiTConfig(vocab_size=vocab_size, **{**PRESETS[name], **overrides}))

    def set_attention_backend(self, backend: str) -> DiT:
        """Attention kernel: "auto" (flash-attn when usable, else SDPA), "sdpa" or "flash"."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; one of {ATTENTION_BACKENDS}")
        self.attention_backend = backend
        return self

    def new_kv_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for causal decoding."""
        if not self.config.causal:
            raise ValueError("a KV cache needs a causal model (DiTConfig(causal=True))")
        return KVCache(max_len)

    # ----------------------------------------------------------------------------- forward
    def embed_input(self, z_t: Tensor | Bag) -> Tensor:
        """(B, L, h) embedding of ids, soft probabilities or a ``Bag`` of (ids, weights)."""
        weight = self.embed.weight
        k = self.config.vocab_size
        if isinstance(z_t, Bag):
            ids, weights = z_t.ids, z_t.weights
            if ids.shape != weights.shape:
                raise ValueError(
                    f"bag ids and weights must both be (B, L, n), got {tuple(ids.shape)} and "
                    f"{tuple(weights.shape)}"
                )
            check_tokens(ids, k, "z_t bag ids")
            b, n, m = ids.shape
            flat = F.embedding_bag(
                ids.reshape(b * n, m).long(),
                weight,
                per_sample_weights=weights.reshape(b * n, m).to(weight.dtype),
                mode="sum",
            )
            return flat.view(b, n, -1)
        if z_t.dtype.is_floating_point:
            if z_t.ndim != 3 or z_t.shape[-1] != k:
                raise ValueError(
                    f"soft input z_t must be (B, L, K={k}) probabilities, got {tuple(z_t.shape)}"
                )
            return torch.matmul(z_t.to(weight.dtype), weight)
        if z_t.ndim != 2:
            raise ValueError(f"token ids z_t must be (B, L), got {tuple(z_t.shape)}")
        check_tokens(z_t, k, "z_t")
        return self.embed(z_t if z_t.dtype in (torch.int32, torch.int64) else z_t.long())

    @typechecked
    def forward(
        self,
        z_t: Tokens | Probs | Bag,
        sigma: Times | None = None,
        *,
        kv_cache: KVCache | None = None,
    ) -> Logits:
        """Logits (B, L, K) of the clean token at every position.

        z_t: ids (B, L), probabilities (B, L, K) (embedded as p @ E) or a bag (ids, weights) of
        shape (B, L, n) each (embedded as sum_n w_n E[id_n]). sigma: (B,) noise level
        -log(alpha_t), required unless causal (ignored there). kv_cache: causal mode only; see
        ``KVCache``.
        """
        x = self.embed_input(z_t)
        b, n, _ = x.shape
        c = None
        if self.sigma_map is not None:
            if sigma is None:
                raise ValueError("sigma (B,) is required by a non-causal (diffusion) DiT")
            if sigma.shape != (b,):
                raise ValueError(f"sigma must have shape (B,) = ({b},), got {tuple(sigma.shape)}")
            check_finite(sigma, "sigma")
            c = F.silu(self.sigma_map(sigma))
        offset = 0
        if kv_cache is not None:
            if not self.config.causal:
                raise ValueError("kv_cache needs a causal model (DiTConfig(causal=True))")
            offset = kv_cache.length
        if x.is_cuda and not torch.compiler.is_compiling():
            flash_attn_available()  # resolve the lazy import outside any compiled graph
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = rotary_tables(
            n, offset, self.config.head_dim, self.config.rotary_base, x.device, table_dtype
        )
        for i, block in enumerate(self.blocks):
            x = block(x, c, cos, sin, kv_cache, i, self.attention_backend)
        logits = self.final(x, c)
        if kv_cache is not None:
            kv_cache.advance(n)
        return logits

    # ----------------------------------------------------------------------------- accounting
    def param_count(self) -> ParamCount:
        """Parameters by part; see ``ParamCount``."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        conditioning = count(self.sigma_map) + count(self.final.adaLN_modulation)
        conditioning += sum(count(block.adaLN_modulation) for block in self.blocks)
        blocks = sum(count(block) for block in self.blocks) - (
            conditioning - count(self.sigma_map) - count(self.final.adaLN_modulation)
        )
        embedding = self.embed.weight.numel()
        output = count(self.final.norm) + self.final.linear.bias.numel()
        if not self.config.tie_weights:
            output += self.final.linear.weight.numel()
        total = self.num_parameters()
        assert total == embedding + conditioning + blocks + output
        return ParamCount(total, embedding, conditioning, blocks, output)

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Number of distinct parameters (tied weights once); optionally without the input
        embedding."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if exclude_embedding else total

    def flops_per_token(
        self, seq_len: int, *, training: bool = True, soft_input: bool = False
    ) -> int:
        """Matmul FLOPs per token, for MFU: 6 N + 12 n_blocks L h when training (fwd + bwd),
        2 N + 4 n_blocks L h for a forward pass.

        N = the weights applied per token as matrix products: per block qkv (3h^2), attention
        output (h^2) and MLP (2 h m), plus the output projection (h K); with ``soft_input`` also
        the input embedding (K h, a matmul p @ E). Lookups, norms, biases, elementwise work and the
        per-sequence conditioning (sigma MLP, adaLN) are left out. The attention term counts
        QK^T and AV over all L keys (2 * 2 L h per token and block), also for causal masks.
        """
        cfg = self.config
        h, m = cfg.hidden_size, cfg.mlp_dim
        n = cfg.n_blocks * (4 * h * h + 2 * h * m) + h * cfg.vocab_size
        if soft_input:
            n += h * cfg.vocab_size
        per_pass = 2 * n + 4 * cfg.n_blocks * seq_len * h
        return 3 * per_pass if training else per_pass

    # ----------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Tied weights are stored once (under ``embed.weight``).
        """
        from safetensors.torch import save_file  # optional dependency

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        if self.config.tie_weights:
            del state["final.linear.weight"]
        config = {"model_type": "discdiff.DiT", **self.config.to_dict()}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", **overrides: Any
    ) -> DiT:
        """Load a model written by ``save_pretrained`` from a local directory.

        ``overrides`` replace config fields that do not change the weights (e.g. dropout).
        The model takes the dtype of the stored weights.
        """
        from safetensors.torch import load_file  # optional dependency

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no model directory at {directory}")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} has no {name} (written by save_pretrained)")
        values = json.loads((directory / CONFIG_NAME).read_text())
        model_type = values.pop("model_type", "discdiff.DiT")
        if model_type != "discdiff.DiT":
            raise ValueError(f"{directory / CONFIG_NAME} describes a {model_type!r}, not a DiT")
        config = DiTConfig.from_dict({**values, **overrides})
        state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
        if config.tie_weights and "embed.weight" in state:
            state["final.linear.weight"] = state["embed.weight"]
        model = cls(config)
        dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
        if len(dtypes) == 1:
            model = model.to(dtype=dtypes.pop())
        model = model.to(device)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(
            f"{name}: stored {tuple(state[name].shape)}, config needs {tuple(t.shape)}"
            for name, t in expected.items()
            if name in state and state[name].shape != t.shape
        )
        if missing or unexpected or wrong:
            raise ValueError(
                f"weights in {directory} do not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
            )
        model.load_state_dict(state)
        return model

    def extra_repr(self) -> str:
        cfg = self.config
        kind = "causal" if cfg.causal else "diffusion"
        return (
            f"{kind}, vocab_size={cfg.vocab_size}, hidden={cfg.hidden_size}, "
            f"blocks={cfg.n_blocks}, heads={cfg.n_heads}, params={self.num_parameters():,}"
        )
