"""The attention structure of a block-diffusion DiT and the kernel that runs it (BD3-LM:
Arriola et al., "Block Diffusion", ICLR 2025; its ``block_diff_mask``).

Training pass: 2L tokens, the noisy copy z_t at indices 0..L-1 and the clean copy x_0 at
L..2L-1, both at positions 0..L-1 (so index i and index L + i are the same position). With b the
block size and blk(p) = p // b the block of position p, a query may attend to a key when

    noisy -> noisy:  blk(q) == blk(k)      block-diagonal: a noisy block sees itself only
    noisy -> clean:  blk(q) >  blk(k)      offset block-causal: the clean blocks before it
    clean -> clean:  blk(q) >= blk(k)      block-causal: the clean copy is a block-wise AR model
    clean -> noisy:  never

so the logits of noisy block i depend on z_t block i and x_0 blocks j < i alone. The mask is
built once per (L, b, device) and kept (``training_mask``, an LRU cache; callers must not write
into it).

Cached sampling: the KV cache holds the clean tokens 0..c-1. A denoising call on the noisy block
at c.. sees every cached key and the whole block (no mask at all). ``prefill_mask``: appending
clean tokens at positions c..c+n-1 is block-causal by absolute position, blk(k) <= blk(q).

Kernels: SDPA with the boolean mask on every device; ``torch.nn.attention.flex_attention``
with a block mask (``mask_kernel`` chooses) on CUDA when it is importable, which skips the
fully masked tiles (half of the 2L x 2L scores) instead of computing them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool
from torch import Tensor

__all__ = [
    "AttentionMask",
    "block_diff_allowed",
    "flex_attend",
    "flex_available",
    "mask_kernel",
    "prefill_mask",
    "training_attention_mask",
    "training_mask",
]

# flex_attention: None = not looked up yet, False = unavailable, else the module.
_flex: Any = None
_compiled_flex: Any = None


def flex_available() -> bool:
    """Import ``torch.nn.attention.flex_attention`` on first use (cached); True if importable."""
    global _flex
    if _flex is None:
        try:
            from torch.nn.attention import flex_attention

            _flex = flex_attention
        except Exception:  # an older torch, or a build without it
            _flex = False
    return _flex is not False


def mask_kernel(device: torch.device, backend: str = "auto") -> Literal["flex", "sdpa"]:
    """The kernel of a masked training pass: "flex" on CUDA with flex_attention importable and
    ``backend`` "auto"; "sdpa" otherwise (on the CPU flex_attention would run unfused, slower
    than SDPA, and ``backend="sdpa"`` asks for SDPA everywhere)."""
    if backend == "flash":
        raise RuntimeError(
            "attention backend 'flash' does not take the block-diffusion mask: use 'auto' or "
            "'sdpa' (set_attention_backend)"
        )
    if backend == "auto" and device.type == "cuda" and flex_available():
        return "flex"
    return "sdpa"


def block_diff_allowed(q: Tensor, k: Tensor, length: int, block_size: int) -> Tensor:
    """May query index q attend to key index k of the 2L-token training input? (module
    docstring). q and k: integer tensors of indices in [0, 2L) that broadcast together; also the
    ``mask_mod`` of flex_attention, so it uses tensor operations only."""
    q_clean, k_clean = q >= length, k >= length
    q_block = torch.where(q_clean, q - length, q) // block_size
    k_block = torch.where(k_clean, k - length, k) // block_size
    diagonal = (q_block == k_block) & (q_clean == k_clean)
    noisy_to_clean = (q_block > k_block) & k_clean & ~q_clean
    clean_to_clean = (q_block >= k_block) & k_clean & q_clean
    return diagonal | noisy_to_clean | clean_to_clean


def _check_blocks(length: int, block_size: int) -> None:
    if block_size < 1 or length < 1 or length % block_size:
        raise ValueError(
            f"the sequence length L={length} must be a positive multiple of block_size={block_size}"
        )


@functools.lru_cache(maxsize=32)
def training_mask(length: int, block_size: int, device: torch.device) -> Bool[Tensor, "l2 l2"]:
    """The (2L, 2L) boolean mask of the training pass, True where a query may attend to a key.

    Cached per (L, b, device): the returned tensor is shared, never write into it."""
    _check_blocks(length, block_size)
    index = torch.arange(2 * length, device=device)
    return block_diff_allowed(index[:, None], index[None, :], length, block_size)


@functools.lru_cache(maxsize=32)
def _training_block_mask(length: int, block_size: int, device: torch.device) -> Any:
    """flex_attention's ``BlockMask`` of ``training_mask`` (cached likewise)."""
    _check_blocks(length, block_size)

    def mask_mod(batch: Tensor, head: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return block_diff_allowed(q, k, length, block_size)

    n = 2 * length
    return _flex.create_block_mask(mask_mod, None, None, n, n, device=device)


@dataclass(frozen=True)
class AttentionMask:
    """A structured attention mask: ``dense`` (Lq, Lk) bool (True: may attend), always there,
    and ``flex``, flex_attention's ``BlockMask`` of the same mask, when the kernel is flex."""

    dense: Tensor
    flex: Any = None


def training_attention_mask(
    length: int, block_size: int, device: torch.device, backend: str = "auto"
) -> AttentionMask:
    """The training pass's mask for the kernel ``mask_kernel(device, backend)`` chooses.

    Under ``torch.compile`` the masks are built inside the graph (traced once per shape), not
    looked up in the LRU caches, which dynamo would bypass with a warning."""
    dense: Callable[..., Tensor] = training_mask
    block: Callable[..., Any] = _training_block_mask
    if torch.compiler.is_compiling():
        dense, block = training_mask.__wrapped__, _training_block_mask.__wrapped__
    if mask_kernel(device, backend) == "flex":
        return AttentionMask(dense(length, block_size, device), block(length, block_size, device))
    return AttentionMask(dense(length, block_size, device))


def prefill_mask(
    start: int, n: int, block_size: int, device: torch.device
) -> Bool[Tensor, "n total"] | None:
    """Mask (n, start + n) of n clean tokens at positions start..start+n-1 over the cached keys
    0..start-1 and themselves: block-causal by absolute position, blk(k) <= blk(q). None when
    every key is allowed (the new tokens lie inside one block), so SDPA runs unmasked."""
    if start // block_size == (start + n - 1) // block_size:
        return None
    rows = torch.arange(start, start + n, device=device)[:, None] // block_size
    cols = torch.arange(start + n, device=device)[None, :] // block_size
    return cols <= rows


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask: Any) -> Tensor:
    """flex_attention of q (B, Lq, H, D), k and v (B, Lk, H, D) under ``block_mask`` ->
    (B, Lq, H, D). Compiled on CUDA (its fused kernel); eager elsewhere (unfused: a check of
    the mask's equality with SDPA, not a fast path)."""
    global _compiled_flex
    if not flex_available():
        raise RuntimeError("torch.nn.attention.flex_attention is not importable in this torch")
    fn = _flex.flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(_flex.flex_attention)
        fn = _compiled_flex
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D): flex's layout
    return fn(q, k, v, block_mask=block_mask).transpose(1, 2)
