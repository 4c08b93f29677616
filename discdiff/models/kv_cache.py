"""The key/value cache of causal decoding (the DiT's autoregressive twin) and of block-diffusion
sampling (the clean blocks of a block model)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of the positions already computed, one pair per transformer block.

    Causal twin: pass the same cache to successive calls, ``model(prompt, kv_cache=cache)`` then
    ``model(next_ids, kv_cache=cache)``; each call attends to everything cached before it and
    appends its own positions. Block model (``DiTConfig(block_size=b)``): ``model.prefill(x,
    cache)`` appends clean tokens; a denoising call ``model(z_block, sigma, kv_cache=cache)``
    attends to the cache and its block and leaves ``length`` as it was (its keys and values sit
    past ``length`` as scratch, overwritten by the next call). ``length`` is the number of
    cached positions, the rotary offset of the next call. Storage per block is (B, capacity, H,
    D), preallocated to ``max_len`` when given, otherwise grown by doubling.
    Meant for inference (under ``torch.no_grad()``).
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
        """Count ``n`` more cached positions (called once per forward, after the last block)."""
        self.length += n
