"""Multi-head attention dispatch (flash-attn or SDPA) and rotary position embeddings.

Shapes: q (B, Lq, H, D), k and v (B, Lk, H, D); H heads of size D.

Attention runs on flash-attn when it is installed, the tensors live on CUDA and are fp16/bf16,
otherwise on ``torch.nn.functional.scaled_dot_product_attention``. flash-attn is imported lazily
by ``flash_attn_available()`` (the DiT calls it on its first eager forward on CUDA), never at
module import.

Padding: ``key_padding_mask`` (B, Lk) bool, True at real tokens, keeps every query from
attending to padded keys. It runs on SDPA (as a boolean ``attn_mask``) on every backend: with
``backend="auto"`` a masked call falls back from flash-attn to SDPA (flash-attn's varlen kernel
would need the batch unpadded first), and ``backend="flash"`` with a mask is an error rather
than a silent fallback. Every query may also attend to its own key, so a padded query never
faces an empty row (no NaN); what padded queries compute is meaningless, but no real token ever
sees a padded one.

Structure: ``attn_mask`` (``discdiff.models.block_mask.AttentionMask``), the block-diffusion
mask, runs on flex_attention when it carries a flex block mask (CUDA, no padding), otherwise on
SDPA with its boolean (Lq, Lk) mask, intersected with the padding mask when both are given.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from discdiff.models.block_mask import AttentionMask, flex_attend

__all__ = [
    "ATTENTION_BACKENDS",
    "apply_rotary",
    "attention",
    "flash_attn_available",
    "rotary_tables",
]

ATTENTION_BACKENDS = ("auto", "sdpa", "flash")

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


def _padding_attn_mask(key_padding_mask: Tensor, n_q: int, causal: bool) -> Tensor:
    """Boolean SDPA mask (B, 1, Lq or 1, Lk), True where a query may attend to a key.

    Real keys only, plus each query's own key (the last Lq keys are the queries' own), so no
    row is empty; intersected with the causal mask when ``causal``.
    """
    n_k = key_padding_mask.shape[1]
    device = key_padding_mask.device
    keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
    rows = torch.arange(n_q, device=device)[:, None] + (n_k - n_q)  # each query's own key
    cols = torch.arange(n_k, device=device)[None, :]
    allowed = keys | (cols == rows)  # (B, 1, Lq, Lk)
    if causal:
        allowed = allowed & (cols <= rows)
    return allowed


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    backend: str = "auto",
    key_padding_mask: Tensor | None = None,
    attn_mask: AttentionMask | None = None,
) -> Tensor:
    """Multi-head attention, q (B, Lq, H, D), k and v (B, Lk, H, D) -> (B, Lq, H, D).

    In causal mode with Lq < Lk the queries are the last Lq positions (decoding with a cache):
    query i attends to keys j <= Lk - Lq + i. ``key_padding_mask`` (B, Lk) bool, True at real
    tokens: queries attend to real keys only (and to their own key); see the module docstring.
    ``attn_mask``: a structured mask (non-causal only), its ``dense`` part (Lq, Lk) bool.
    """
    if attn_mask is not None:
        return _masked(q, k, v, attn_mask, backend, key_padding_mask)
    if key_padding_mask is not None:
        if backend == "flash":
            raise RuntimeError(
                "attention backend 'flash' does not take a key padding mask: use 'auto' or "
                "'sdpa' (masked attention runs on SDPA)"
            )
        mask = _padding_attn_mask(key_padding_mask.to(device=q.device, dtype=torch.bool),
                                  q.shape[1], causal)  # fmt: skip
        return _sdpa(q, k, v, attn_mask=mask)
    if _use_flash(q, backend):
        # flash-attn >= 2.1 aligns the causal mask bottom-right, as required for Lq < Lk.
        return _flash_attn.flash_attn_func(q, k, v, causal=causal)
    n_q, n_k = q.shape[1], k.shape[1]
    mask = None
    is_causal = causal and n_q == n_k
    if causal and 1 < n_q < n_k:
        rows = torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q)
        mask = torch.arange(n_k, device=q.device)[None, :] <= rows  # (Lq, Lk)
    return _sdpa(q, k, v, attn_mask=mask, is_causal=is_causal)


def _masked(q: Tensor, k: Tensor, v: Tensor, attn_mask: AttentionMask, backend: str,
            key_padding_mask: Tensor | None) -> Tensor:  # fmt: skip
    """Attention under a structured mask: flex when it carries a block mask and no padding is
    asked for, else SDPA with the dense mask (and the padding)."""
    if backend == "flash":
        raise RuntimeError("attention backend 'flash' does not take the block-diffusion mask: "
                           "use 'auto' or 'sdpa'")  # fmt: skip
    if attn_mask.flex is not None and key_padding_mask is None:
        return flex_attend(q, k, v, attn_mask.flex)
    allowed = attn_mask.dense.to(q.device)  # (Lq, Lk)
    if key_padding_mask is not None:  # the dense mask allows each query its own key: no empty row
        padding = _padding_attn_mask(key_padding_mask.to(device=q.device, dtype=torch.bool),
                                     q.shape[1], causal=False)  # fmt: skip
        allowed = allowed & padding  # (B, 1, Lq, Lk)
    return _sdpa(q, k, v, attn_mask=allowed)


def _sdpa(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool = False
) -> Tensor:
    """SDPA of q (B, Lq, H, D), k and v (B, Lk, H, D) -> (B, Lq, H, D).

    SDPA wants the heads first, (B, H, L, D), where this module (like flash-attn) keeps them
    second; the permutations are views, nothing is copied.
    """
    q, k, v = (rearrange(t, "b l h d -> b h l d") for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return rearrange(out, "b h l d -> b l h d")


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
