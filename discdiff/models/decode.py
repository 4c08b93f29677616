"""Autoregressive generation from a causal model (the DiT's causal twin), with its KV cache.

Each new token is drawn exactly from softmax(logits / temperature) at the last position, after
optional top-k / nucleus filtering (``discdiff.samplers.sample_categorical_logits``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from discdiff.models.dit import DiT
from discdiff.samplers import sample_categorical_logits
from discdiff.typing import as_float, check_count, check_range, check_tokens

__all__ = ["generate_ar"]


@torch.no_grad()
def generate_ar(
    model: Callable[..., Tensor],
    prompt: Tensor,
    max_new_tokens: int,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Continue ``prompt`` (B, P) by ``max_new_tokens`` tokens: ids (B, P + max_new_tokens).

    ``model`` is a causal LM: ids (B, L) -> logits (B, L, K), logits at position i predicting
    token i + 1, e.g. ``DiT(DiTConfig(..., causal=True))``. When it has ``new_kv_cache`` (and
    ``use_cache``), the prompt is encoded once and every later call feeds one token through the
    cache; otherwise each step recomputes the whole prefix. Both give the same tokens for the same
    ``generator`` (up to float rounding in the logits). The prompt needs at least one token (a
    BOS). ``top_k`` / ``top_p`` filter the scaled logits before each draw (see
    ``sample_categorical_logits``). The model's train/eval mode is left as it is (dropout!).
    Returns int64 ids on the prompt's device; the first P columns are the prompt.
    """
    n_new = check_count(max_new_tokens, "max_new_tokens", minimum=0)
    temperature = as_float(temperature, "temperature")
    check_range(temperature, "temperature", 0.0, math.inf, open_lo=True)
    if top_k is not None:
        check_count(top_k, "top_k")
    if top_p is not None:
        check_range(as_float(top_p, "top_p"), "top_p", 0.0, 1.0, open_lo=True)
    _check_prompt(model, prompt)

    b, p = prompt.shape
    out = torch.empty(b, p + n_new, dtype=torch.long, device=prompt.device)  # (B, P + N)
    out[:, :p] = prompt
    cache = model.new_kv_cache(p + n_new) if use_cache and hasattr(model, "new_kv_cache") else None
    fed = 0  # positions already in the cache
    for i in range(p, p + n_new):
        if cache is None:
            logits = model(out[:, :i])  # (B, i, K): the whole prefix again
        else:  # the prompt first, then the token drawn last step
            logits, fed = model(out[:, fed:i], kv_cache=cache), i
        last = logits[:, -1] / temperature  # (B, K)
        out[:, i] = sample_categorical_logits(last, top_k=top_k, top_p=top_p, generator=generator)
    return out


def _check_prompt(model: Callable[..., Tensor], prompt: Tensor) -> None:
    if not isinstance(prompt, Tensor) or prompt.ndim != 2 or prompt.shape[1] == 0:
        shape = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be token ids (B, P) with P >= 1, got {shape}")
    if not isinstance(model, DiT):  # any causal callable: its vocabulary is its own business
        check_tokens(prompt, torch.iinfo(torch.int64).max, "prompt")  # integer, non-negative
        return
    if not model.config.causal:
        raise ValueError("generate_ar needs a causal model (DiTConfig(causal=True))")
    check_tokens(prompt, model.config.vocab_size, "prompt")
