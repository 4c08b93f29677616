"""transformers' DiffusionGemma as a discdiff block denoiser.

``DiffusionGemmaForBlockDiffusion`` is a uniform-state block-diffusion LM: a causal encoder
writes the clean context (prompt, finished canvases) into a KV cache, and a bidirectional
decoder denoises a canvas of ``config.canvas_length`` tokens reading that cache. It has no
time input, it self-conditions on the previous step's logits, and it was trained with
cross-entropy, so its logits are the posterior p(x | z_t) (SPEC §11), not Duo's x_hat.

``DiffusionGemmaDenoiser(model)`` gives it the block-denoiser protocol the block sampler drives
(``block_size`` = the canvas length, ``new_kv_cache``, the cached call, ``prefill``; the
protocol is written out in the class docstring). The masks, positions and self-conditioning
are built exactly as ``model.generate`` builds them, so a sampler that makes the same draws
gets the same tokens (``tests/test_adapters_diffusion_gemma.py`` checks it against
``generate`` with ``discdiff.samplers.policies.EntropyBoundStep``).

Needs ``transformers >= 5.23`` (the ``hf`` extra); imported by this module only.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = ["DiffusionGemmaCache", "DiffusionGemmaDenoiser"]


class DiffusionGemmaCache:
    """The encoder's KV cache of clean tokens (a transformers ``DynamicCache``) and its length.

    ``length`` counts the positions written by ``prefill`` (the next canvas starts there);
    ``crop(n)`` keeps the first n (transformers' ``DynamicCache.crop``: sliding-window layers
    refuse a crop once their window is full); ``reset()`` empties it.
    """

    def __init__(self, config: Any, max_len: int | None = None) -> None:
        self.config, self.max_len = config, max_len
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.hf = DynamicCache(config=self.config.get_text_config(decoder=True))
        self.length = 0

    def crop(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"crop(n) needs 0 <= n <= length = {self.length}, got n={n}")
        if n == 0:
            self.reset()
        elif n < self.length:
            self.hf.crop(n - self.length)  # transformers takes minus the tokens to drop
            self.length = n


class DiffusionGemmaDenoiser(nn.Module):
    """A ``DiffusionGemmaForBlockDiffusion`` behind the block-denoiser protocol.

    - ``block_size`` = ``config.canvas_length``; ``vocab_size``; ``reads_token_levels = True``
      and ``parameterization = "posterior"`` (trained with cross-entropy: the samplers convert
      to x_hat where they need it; the decoding policies read the posterior as it is).
    - ``denoiser(z_block, sigma, kv_cache=cache)`` -> logits (B, n, K): the decoder on the n <= b
      canvas tokens placed after the ``cache.length`` cached ones, bidirectional inside the
      canvas. ``sigma`` is not read (the model has no time input). The cache is not changed.
    - ``prefill(x, cache)``: the encoder on the clean ids x (B, n) appended at ``cache.length``
      (any n: the encoder is causal, so a prompt need not fill whole blocks); cache.length += n.
    - ``denoiser(z_t, sigma, x_0=x_0)`` (no cache): the recompute pass over L = m b tokens, block
      i decoded against the cache of BOS and x_0's blocks j < i, without self-conditioning (the
      decoder needs one cached token at least, and the model's sequences start with BOS).

    Self-conditioning: a cached call feeds the decoder the logits carried from the previous
    call on the same canvas (same cache, same length); the first call of a canvas, and any call
    after ``prefill``, gets none (zeros, as ``generate``'s first step). By default a call
    carries its own logits; ``carry(logits)`` replaces them (``generate`` feeds back its
    temperature-scaled logits: pass ``feedback=denoiser.carry`` to ``EntropyBoundStep``).
    """

    reads_token_levels = True
    parameterization = "posterior"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "canvas_length") or not hasattr(model, "model"):
            raise TypeError(
                "model must be a transformers DiffusionGemmaForBlockDiffusion (with .config."
                f"canvas_length and .model), got {type(model).__name__}"
            )
        self.model = model
        self.block_size = int(config.canvas_length)
        self.vocab_size = int(config.text_config.vocab_size)
        self._carried: tuple[int, int, Tensor] | None = None

    def new_kv_cache(self, max_len: int | None = None) -> DiffusionGemmaCache:
        """An empty cache (``max_len`` is accepted for the protocol; the cache grows)."""
        self._carried = None
        return DiffusionGemmaCache(self.model.config, max_len)

    def carry(self, logits: Tensor) -> None:
        """Use ``logits`` (B, n, K) as the next call's self-conditioning on this canvas."""
        if self._carried is None:
            raise ValueError("carry() needs a cached call on the canvas first")
        key, length, _ = self._carried
        self._carried = (key, length, logits.to(self._embed_dtype()))

    def _embed_dtype(self) -> torch.dtype:
        return self.model.model.decoder.embed_tokens.weight.dtype

    def _ones(self, b: int, n: int, device: torch.device) -> Tensor:
        return torch.ones((b, n), dtype=torch.bool, device=device)

    def forward(
        self,
        z_t: Int[Tensor, "b n"],
        sigma: Tensor,
        *,
        kv_cache: DiffusionGemmaCache | None = None,
        x_0: Int[Tensor, "b n"] | None = None,
    ) -> Float[Tensor, "b n k"]:
        if kv_cache is None:
            if x_0 is None:
                raise ValueError(
                    "DiffusionGemmaDenoiser needs kv_cache= (a cached call on one canvas) or "
                    "x_0= (the recompute pass over whole blocks)"
                )
            return self._recompute(z_t, x_0)
        return self._decode(z_t, kv_cache)

    def _decode(self, z: Tensor, cache: DiffusionGemmaCache) -> Tensor:
        b, n = z.shape
        if cache.length == 0:
            raise ValueError(
                "DiffusionGemma's decoder reads at least one cached token: prefill(x, cache) a "
                "prompt first (its prompts start with the BOS id, config.text_config.bos_token_id)"
            )
        if n > self.block_size:
            raise ValueError(
                f"a cached call takes at most block_size={self.block_size} tokens, got {n}"
            )
        inner = self.model.model
        key = id(cache)
        carried = self._carried
        sc = carried[2] if carried is not None and carried[:2] == (key, cache.length) else None
        mask = inner.decoder.create_diffusion_decoder_attention_mask(
            config=self.model.config,
            inputs_embeds=z.unsqueeze(-1),  # only its (B, n) shape, dtype and device are read
            cache=cache.hf,
            decoder_attention_mask=self._ones(b, cache.length + n, z.device),
        )
        positions = torch.arange(cache.length, cache.length + n, device=z.device).unsqueeze(0)
        logits = self.model(
            decoder_input_ids=z,
            cache=cache.hf,
            self_conditioning_logits=sc,
            decoder_attention_mask=mask,
            decoder_position_ids=positions,
        ).logits
        self._carried = (key, cache.length, logits.to(self._embed_dtype()))
        return logits

    @torch.no_grad()
    def prefill(self, x: Int[Tensor, "b n"], cache: DiffusionGemmaCache) -> None:
        """Encode the clean ids ``x`` (B, n) after the cached positions; cache.length += n."""
        self._encode(x, cache)

    def _encode(self, x: Tensor, cache: DiffusionGemmaCache) -> None:
        """``prefill`` with gradients (the recompute pass trains the encoder through it)."""
        b, n = x.shape
        encoder = self.model.model.encoder
        positions = torch.arange(cache.length, cache.length + n, device=x.device).unsqueeze(0)
        dummy = torch.empty((b, n, 0), dtype=self.model.dtype, device=x.device)
        mask = encoder.create_masks_for_generate(
            config=self.model.config,
            inputs_embeds=dummy,
            attention_mask=self._ones(b, cache.length + n, x.device),
            cache=cache.hf,
            position_ids=positions,
        )
        encoder(
            input_ids=x.contiguous(), attention_mask=mask, cache=cache.hf, position_ids=positions
        )
        cache.length += n
        self._carried = None

    def _recompute(self, z_t: Tensor, x_0: Tensor) -> Tensor:
        b, length = z_t.shape
        if length % self.block_size or x_0.shape != z_t.shape:
            raise ValueError(
                f"the recompute pass takes z_t and x_0 of the same shape (B, L), L a multiple of "
                f"block_size={self.block_size}; got z_t {tuple(z_t.shape)}, x_0 {tuple(x_0.shape)}"
            )
        cache = self.new_kv_cache(length + 1)
        bos = self.model.config.text_config.bos_token_id
        self._encode(torch.full((b, 1), bos, dtype=x_0.dtype, device=x_0.device), cache)
        out = []
        for start in range(0, length, self.block_size):
            block = slice(start, start + self.block_size)
            self._carried = None
            out.append(self._decode(z_t[:, block], cache))
            if start + self.block_size < length:
                self._encode(x_0[:, block], cache)
        self._carried = None
        return torch.cat(out, dim=1)
