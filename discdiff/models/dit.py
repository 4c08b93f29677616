"""The reference diffusion transformer (DiT) of MDLM / Duo, and its causal autoregressive twin.

Notation: ``z_t`` the noisy input (token ids (B, L), soft probabilities (B, L, K) or a top-n bag
``(ids, weights)`` each (B, L, n)); ``sigma`` = -log(alpha_t), one noise level per sequence (B,)
or one per token (B, L) (0 at clean context: prompts; ``discdiff.context``);
K ``vocab_size``; h ``hidden_size``; H ``n_heads``; D = h / H the head size; c ``cond_dim``.

    e = embed(z_t)                               ids: E[z]; soft: p @ E; bag: sum_n w_n E[id_n]
    c = SiLU(MLP(sinusoidal_256(sigma)))         (B, cond_dim) or (B, L, cond_dim); none if causal
    per block:  x += gate_a * Attn(LN(x) * (1 + scale_a) + shift_a)      rotary q, k; fused qkv
                x += gate_m * MLP(LN(x) * (1 + scale_m) + shift_m)       GELU(tanh), 4h
                (shift, scale, gate) = Linear(c) zero-initialised (adaLN-zero)
    logits = Linear(LN(x) * (1 + scale_f) + shift_f)                     zero-initialised

At initialisation every block is the identity on the residual stream and the logits are zero.

The output projection has ``padded_rows(K)`` rows, K rounded up to a multiple of 128 (50257 ->
50304), so that its GEMMs run on aligned rows; the rows past K are never read: ``forward``
returns exactly K logits (a view of the padded product), ``output_projection`` gives K rows,
and a state dict with K rows (older checkpoints, converted reference weights) loads, padded
with zeros (``discdiff.models.projection``). With ``tie_weights`` the projection is the (K, h)
embedding and is not padded.
The DiT also offers ``discdiff.denoise.FusedHead`` (``hidden_states``, ``output_projection``),
through which the diffusion losses fuse the output layer with the loss.

The causal twin (``causal=True``: the autoregressive baseline and evaluator LM) has no noise
conditioning at all: no sigma embedder and no adaLN layers, plain pre-LayerNorm residual blocks
(``x += Attn(LN(x))``), causal attention and an optional KV cache for decoding. ``sigma`` is
ignored there.

The model alone lives here; attention kernels, the KV cache, the output projection, sizes,
saving, reference checkpoints and decoding have their own modules beside this one (see
``discdiff.models``). Those the model's methods call (``accounting``, ``persistence``,
``reference``) take the model class or its config as an argument and never import this module,
so the imports of ``discdiff.models`` form no circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor, nn

from discdiff.checks import check_model_tokens
from discdiff.models import accounting, persistence, reference
from discdiff.models.accounting import ParamCount
from discdiff.models.attention import (
    ATTENTION_BACKENDS,
    apply_rotary,
    attention,
    flash_attn_available,
    rotary_tables,
)
from discdiff.models.block_mask import AttentionMask, prefill_mask, training_attention_mask
from discdiff.models.config import PRESETS, DiTConfig
from discdiff.models.kv_cache import KVCache
from discdiff.models.layers import FinalLayer, TimestepEmbedder, modulate, per_position
from discdiff.models.projection import OUTPUT_ROW_MULTIPLE, padded_rows
from discdiff.typing import (
    Bag,
    Logits,
    Probs,
    Times,
    Tokens,
    check_finite,
    check_tokens,
    typechecked,
)

__all__ = [
    "OUTPUT_ROW_MULTIPLE",
    "PRESETS",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "TimestepEmbedder",
    "padded_rows",
]


Rope = tuple[Tensor, Tensor]
"""cos and sin of the rotary angles of the input's positions, (L, D/2) each."""


class DiTBlock(nn.Module):
    """Pre-LayerNorm transformer block with adaLN-zero modulation (none in causal mode).

    ``index``: the block's place in the stack, its slot in a ``KVCache``.
    """

    def __init__(self, config: DiTConfig, index: int):
        super().__init__()
        h = config.hidden_size
        self.index = index
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
        rope: Rope,
        kv_cache: KVCache | None,
        backend: str,
        padding_mask: Tensor | None = None,
        attn_mask: AttentionMask | None = None,
    ) -> Tensor:
        """x (B, L, h) the residual stream, c (B, cond_dim) or (B, L, cond_dim) the
        conditioning (None if causal), padding_mask (B, L) bool (True at real tokens) or None,
        attn_mask the block-diffusion structure (``discdiff.models.block_mask``) or None."""
        if self.adaLN_modulation is None:  # causal twin: a plain pre-LayerNorm block
            y = self._attend(self.norm1(x), rope, kv_cache, backend, padding_mask)
            x = x + self.dropout(y)
            return x + self.dropout(self.mlp(self.norm2(x)))
        assert c is not None
        modulation = per_position(self.adaLN_modulation(c))  # (B, 1 | L, 6h)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6, dim=-1)
        y = self._attend(modulate(self.norm1(x), shift_a, scale_a), rope, kv_cache, backend,
                         padding_mask, attn_mask)  # fmt: skip
        x = torch.addcmul(x, gate_a, self.dropout(y))  # x + gate_a * y, one pass
        y = self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, L, h)
        return torch.addcmul(x, gate_m, self.dropout(y))

    def _attend(
        self,
        y: Tensor,
        rope: Rope,
        kv_cache: KVCache | None,
        backend: str,
        padding_mask: Tensor | None = None,
        attn_mask: AttentionMask | None = None,
    ) -> Tensor:
        """Self-attention of the normalised stream y (B, L, h), output projection included."""
        qkv = rearrange(self.qkv(y), "b l (qkv h d) -> b l qkv h d", qkv=3, h=self.n_heads)
        qk = apply_rotary(qkv[:, :, :2], *rope)  # (B, L, 2, H, D)
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]  # (B, L, H, D) each
        if kv_cache is not None:
            k, v = kv_cache.update(self.index, k, v)  # (B, cached + L, H, D) each
        out = attention(
            q,
            k,
            v,
            causal=self.causal,
            backend=backend,
            key_padding_mask=padding_mask,
            attn_mask=attn_mask,
        )  # (B, L, H, D)
        return self.attn_out(rearrange(out, "b l h d -> b l (h d)"))


class DiT(nn.Module):
    """Diffusion transformer denoiser ``DiT(config)(z_t, sigma) -> logits (B, L, K)``.

    Satisfies ``discdiff.typing.Denoiser``. Build one with ``DiT.from_preset("small",
    vocab_size=K)`` or ``DiT(DiTConfig(...))``; ``causal=True`` gives the autoregressive twin.

    Logits are in the parameters' dtype (float32 for a float32 model), or in the autocast dtype
    (e.g. bfloat16) when called under ``torch.autocast``; losses should upcast as they need.
    The residual stream stays in the parameters' dtype under autocast.

    Also a ``discdiff.denoise.FusedHead``: ``hidden_states`` (the input of the output
    projection) and ``output_projection`` (its K rows), for losses fused with the output layer.
    The output projection's parameters hold ``padded_rows(K)`` rows (see the module docstring).
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        # sigma may be (B, L): 0 at clean context (discdiff.context); the causal twin reads none
        self.reads_token_levels = not config.causal
        self.block_size = config.block_size  # b of a block-diffusion model (BD3-LM), or None
        self.attention_backend = "auto"
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.sigma_map = (
            None if config.causal else TimestepEmbedder(config.cond_dim, config.frequency_dim)
        )
        self.label_embed: nn.Embedding | None = None  # classifier-free guidance's class labels
        if config.num_classes is not None:  # row num_classes: the null label
            self.label_embed = nn.Embedding(config.num_classes + 1, config.cond_dim)
            nn.init.normal_(self.label_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(DiTBlock(config, i) for i in range(config.n_blocks))
        self.final = FinalLayer(config)
        if config.tie_weights:
            self.final.linear.weight = self.embed.weight

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
        """An empty KV cache: for causal decoding, or the clean blocks of a block model."""
        if not self.config.causal and self.block_size is None:
            raise ValueError("a KV cache needs a causal model (DiTConfig(causal=True)) or a "
                             "block model (DiTConfig(block_size=b))")  # fmt: skip
        return KVCache(max_len)

    def embed_input(self, z_t: Tensor | Bag) -> Tensor:
        """(B, L, h) embedding of ids, soft probabilities or a ``Bag`` of (ids, weights)."""
        weight = self.embed.weight  # (K, h)
        k = self.config.vocab_size
        if isinstance(z_t, Bag):
            ids, weights = z_t.ids, z_t.weights
            if ids.shape != weights.shape:
                raise ValueError(
                    f"bag ids and weights must both be (B, L, n), got {tuple(ids.shape)} and "
                    f"{tuple(weights.shape)}"
                )
            check_model_tokens(ids, k, "DiT", "z_t bag ids")  # even when trusted: its own K
            flat = F.embedding_bag(  # one bag per position: (B * L, h)
                rearrange(ids, "b l n -> (b l) n").long(),
                weight,
                per_sample_weights=rearrange(weights, "b l n -> (b l) n").to(weight.dtype),
                mode="sum",
            )
            return rearrange(flat, "(b l) h -> b l h", b=ids.shape[0])
        if z_t.dtype.is_floating_point:
            if z_t.ndim != 3 or z_t.shape[-1] != k:
                raise ValueError(
                    f"soft input z_t must be (B, L, K={k}) probabilities, got {tuple(z_t.shape)}"
                )
            return torch.matmul(z_t.to(weight.dtype), weight)
        if z_t.ndim != 2:
            raise ValueError(f"token ids z_t must be (B, L), got {tuple(z_t.shape)}")
        check_model_tokens(z_t, k, "DiT")  # even below a public call: its own vocabulary
        return self.embed(z_t if z_t.dtype in (torch.int32, torch.int64) else z_t.long())

    @typechecked
    def forward(
        self,
        z_t: Tokens | Probs | Bag,
        sigma: Times | Float[Tensor, "b l"] | None = None,
        *,
        x_0: Tokens | None = None,
        kv_cache: KVCache | None = None,
        padding_mask: Bool[Tensor, "b l"] | None = None,
        return_hidden: bool = False,
        label: Tensor | None = None,
    ) -> Logits | Float[Tensor, "b l h"]:
        """Logits (B, L, K) of the clean token at every position.

        z_t: ids (B, L), probabilities (B, L, K) (embedded as p @ E) or a bag (ids, weights) of
        shape (B, L, n) each (embedded as sum_n w_n E[id_n]). sigma: noise level
        -log(alpha_t), (B,) one per sequence or (B, L) one per token (0 at clean context, which
        the model then reads as given: ``reads_token_levels``), required unless causal (ignored
        there). x_0: a block model's training pass (``block_size`` b, BD3-LM): the clean ids
        (B, L), L a multiple of b; the model reads [z_t ; x_0] with the block mask and returns
        the logits of z_t, block i seeing z_t block i and x_0 blocks j < i
        (``discdiff.models.block_mask``). kv_cache (``KVCache``): for the causal twin, decoding
        (each call appends its tokens); for a block model, a denoising call on at most b tokens
        after the cached clean ones, which reads the cache and leaves it unchanged
        (``prefill`` appends). A block model without x_0 and cache reads at most b tokens, one
        block with no context (so ``block_size=L`` is the ordinary model).
        padding_mask: (B, L) bool, True at real tokens: no position attends to a padded one,
        so the logits at real positions are those of the real tokens alone (to rounding); the
        logits at padded positions are finite but meaningless. The diffusion
        objects pass it as conditioning: ``loss(model, x_0, cond={"padding_mask": mask})``.
        Masked attention runs on SDPA (see ``discdiff.models.attention``). return_hidden: give
        the input of the output projection (B, L, h) instead of the logits (``hidden_states``).
        label: (B,) int64 class labels of a model with ``num_classes``, in [0, num_classes]
        (num_classes, or no label at all, is the null label: the unconditional prediction); its
        embedding is added to sigma's. The samplers pass it as ``cond={"label": y}``.
        """
        x = self.embed_input(z_t)  # (B, L, h)
        b, n, _ = x.shape
        if padding_mask is not None and kv_cache is not None:
            raise ValueError(
                "padding_mask cannot be combined with a kv_cache (decode unpadded sequences)"
            )
        c = self._conditioning(sigma, label, b, n)  # (B, c) or (B, L, c); None if causal
        if x_0 is not None:
            if kv_cache is not None:
                raise ValueError("x_0 (the training pass) takes no kv_cache: the cache serves "
                                 "sampling, model(z_block, sigma, kv_cache=cache)")  # fmt: skip
            return self._training_pass(x, c, x_0, label, padding_mask, return_hidden)
        self._check_call(n, kv_cache)
        offset = 0 if kv_cache is None else kv_cache.length  # new positions follow the cached
        x = self._trunk(x, c, self._rope(n, offset, x), kv_cache, padding_mask)
        if kv_cache is not None and self.config.causal:  # a block model's cache holds clean
            kv_cache.advance(n)  # tokens only: its denoising calls leave the cache as it was
        return self.final.modulated(x, c) if return_hidden else self.final(x, c)  # (B, L, h | K)

    def _check_call(self, n: int, kv_cache: KVCache | None) -> None:
        """A cache needs the causal twin or a block model; a block model reads more than one
        block only in its training pass (x_0 given)."""
        block = self.block_size
        if kv_cache is not None and not self.config.causal and block is None:
            raise ValueError("kv_cache needs a causal model (DiTConfig(causal=True)) or a block "
                             "model (DiTConfig(block_size=b))")  # fmt: skip
        if block is not None and n > block:
            raise ValueError(
                f"z_t has {n} tokens, more than block_size={block}: a block model reads a longer "
                "z_t only with x_0= (the training pass); with kv_cache= it denoises one block"
            )

    def _conditioning(self, sigma: Tensor | None, label: Tensor | None, b: int, n: int
                      ) -> Tensor | None:  # fmt: skip
        """SiLU(sigma embedding + label embedding): (B, c) or (B, L, c); None if causal."""
        if label is not None and self.label_embed is None:
            raise ValueError(
                "label given, but this DiT has no label embedding: build it with "
                "DiTConfig(num_classes=...) (a diffusion DiT, not the causal twin)"
            )
        if self.sigma_map is None:
            return None
        if sigma is None:
            raise ValueError("sigma (B,) is required by a non-causal (diffusion) DiT")
        if sigma.shape not in ((b,), (b, n)):
            raise ValueError(f"sigma must have shape (B,) = ({b},) or (B, L) = ({b}, {n}), "
                             f"got {tuple(sigma.shape)}")  # fmt: skip
        check_finite(sigma, "sigma")
        c = self.sigma_map(sigma)  # (B, c) or (B, L, c)
        if self.label_embed is not None:
            y = self.label_embed(self._labels(label, b, c.device))  # (B, c)
            c = c + (y if c.ndim == 2 else y.unsqueeze(1))
        return F.silu(c)

    def _rope(self, n: int, offset: int, x: Tensor) -> Rope:
        """Rotary tables of positions offset..offset+n-1, (n, D/2) each, float64 for a float64
        stream (else float32)."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cfg = self.config
        return rotary_tables(n, offset, cfg.head_dim, cfg.rotary_base, x.device, dtype)

    def _trunk(self, x: Tensor, c: Tensor | None, rope: Rope, kv_cache: KVCache | None,
               padding_mask: Tensor | None, attn_mask: AttentionMask | None = None
               ) -> Tensor:  # fmt: skip
        """The residual stream x (B, L, h) through every block."""
        if x.is_cuda and not torch.compiler.is_compiling():
            flash_attn_available()  # resolve the lazy import outside any compiled graph
        for block in self.blocks:
            x = block(x, c, rope, kv_cache, self.attention_backend, padding_mask, attn_mask)
        return x

    def _training_pass(self, x: Tensor, c: Tensor | None, x_0: Tensor, label: Tensor | None,
                       padding_mask: Tensor | None, return_hidden: bool) -> Tensor:  # fmt: skip
        """A block model's pass over [z_t ; x_0]: x (B, L, h) the embedded z_t, c its
        conditioning; the clean copy at level 0, both copies at positions 0..L-1, the mask of
        ``discdiff.models.block_mask``. Logits (or hidden states) of the noisy copy only."""
        b, n, _ = x.shape
        if self.block_size is None:
            raise ValueError(
                "x_0 is the clean copy of a block model's training pass; this "
                "DiT has no block_size: build it with DiTConfig(block_size=b)"
            )
        if n % self.block_size:
            raise ValueError(f"the length L={n} of z_t and x_0 must be a multiple of "
                             f"block_size={self.block_size}")  # fmt: skip
        assert c is not None  # a block model is a diffusion model
        clean = self._conditioning(c.new_zeros(b, n), label, b, n)  # (B, L, c): level 0
        assert clean is not None
        c = torch.cat([c if c.ndim == 3 else c.unsqueeze(1).expand(-1, n, -1), clean], dim=1)
        x = torch.cat([x, self.embed_input(x_0)], dim=1)  # (B, 2L, h)
        cos, sin = self._rope(n, 0, x)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))  # both copies at 0..L-1
        mask = training_attention_mask(n, self.block_size, x.device, self.attention_backend)
        padding = None if padding_mask is None else padding_mask.repeat(1, 2)  # (B, 2L)
        x = self._trunk(x, c, rope, None, padding, mask)[:, :n]  # the noisy copy: (B, L, h)
        c = c[:, :n]
        return self.final.modulated(x, c) if return_hidden else self.final(x, c)

    @torch.no_grad()
    def prefill(self, x: Tokens, kv_cache: KVCache, *, label: Tensor | None = None) -> None:
        """Append the clean tokens x (B, n) at level 0 to a block model's ``kv_cache``.

        They take positions length..length+n-1 and attend block-causally by absolute position
        (position p in block p // b): to every cached token, to their own block and to earlier
        blocks of x, as the clean copy of the training pass does. ``kv_cache.length`` grows by
        n. The cached keys and values are the training pass's when each call ends on a block
        boundary; the tokens of a block cut by a call's end see only the part of it given so
        far (so a sampler prefills whole blocks and puts a prompt's remainder at level 0 at the
        start of the first generated block).
        """
        b = self.block_size
        if b is None:
            raise ValueError("prefill needs a block model (DiTConfig(block_size=b))")
        h = self.embed_input(x)  # (B, n, h)
        batch, n, _ = h.shape
        c = self._conditioning(h.new_zeros(batch, n), label, batch, n)  # (B, n, c): level 0
        start = kv_cache.length
        dense = prefill_mask(start, n, b, h.device)  # None inside one block: unmasked SDPA
        mask = None if dense is None else AttentionMask(dense)
        self._trunk(h, c, self._rope(n, start, h), kv_cache, None, mask)
        kv_cache.advance(n)

    def _labels(self, label: Tensor | None, b: int, device: torch.device) -> Tensor:
        """(B,) int64 labels for the label embedding; None is the null label for all rows."""
        null = self.config.num_classes
        assert null is not None
        if label is None:
            return torch.full((b,), null, dtype=torch.long, device=device)
        if label.shape != (b,):
            raise ValueError(f"label must have shape (B,) = ({b},), got {tuple(label.shape)}")
        check_tokens(label, null + 1, "label")
        return label.long()

    def hidden_states(
        self, z_t: Tokens | Probs | Bag, sigma: Times | None = None, **cond: Any
    ) -> Tensor:
        """The input of the output projection (B, L, h), after the final norm and adaLN
        modulation: ``self(z_t, sigma, **cond) == hidden @ weight.T + bias`` with
        ``weight, bias = self.output_projection()`` (``discdiff.denoise.FusedHead``).

        It runs the module's ``__call__`` (``forward(..., return_hidden=True)``), so hooks
        (FSDP) and an in-place ``model.compile()`` apply as to a plain call.
        """
        return self(z_t, sigma, **cond, return_hidden=True)

    def output_projection(self) -> tuple[Tensor, Tensor]:
        """The output projection's K rows: weight (K, h) and bias (K,), views of the live
        parameters (no padding rows)."""
        return self.final.projection()

    # Sizes, saving and reference checkpoints live in their own modules (which take the model
    # and its config, or the class to build, as arguments); these methods delegate.
    def param_count(self) -> ParamCount:
        """Parameters by part; see ``discdiff.models.accounting.ParamCount``."""
        return accounting.param_count(self, self.config)

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Distinct parameters (tied weights once); optionally without the input embedding."""
        return accounting.num_parameters(self, self.config, exclude_embedding)

    def flops_per_token(
        self, seq_len: int, *, training: bool = True, soft_input: bool = False
    ) -> int:
        """Matmul FLOPs per token; see ``discdiff.models.accounting.flops_per_token``."""
        return accounting.flops_per_token(
            self.config, seq_len, training=training, soft_input=soft_input
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors``; see ``discdiff.models.persistence``."""
        return persistence.save_pretrained(self, self.config, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", **overrides: Any
    ) -> DiT:
        """Load a model written by ``save_pretrained``; ``overrides`` replace config fields that
        leave the weights alone (e.g. dropout). See ``discdiff.models.persistence``."""
        return persistence.load_pretrained(directory, model_class=cls, device=device, **overrides)

    @classmethod
    def from_reference(cls, path: str | Path, weights: str = "ema", **overrides: Any) -> DiT:
        """A released Duo / MDLM checkpoint (Lightning .ckpt, HubMixin or Hugging Face
        directory) with its ``weights`` ("ema" or "raw"). See ``discdiff.models.reference``."""
        return reference.load_reference(path, weights, model_class=cls, **overrides).model

    def extra_repr(self) -> str:
        cfg = self.config
        kind = "causal" if cfg.causal else "diffusion"
        return (
            f"{kind}, vocab_size={cfg.vocab_size}, hidden={cfg.hidden_size}, "
            f"blocks={cfg.n_blocks}, heads={cfg.n_heads}, params={self.num_parameters():,}"
        )
