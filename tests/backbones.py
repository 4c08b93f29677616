"""A backbone that is not a DiT, for the example's ``--model.factory`` hook.

    python -m examples.train --model.factory tests.backbones:tiny_gru \
        --model.options '{"layers": 1}'
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class TinyGRU(nn.Module):
    """Embedding -> GRU (bidirectional for diffusion, forward-only when causal) -> logits.

    The denoiser contract: ``model(z_t, sigma, **cond) -> logits (B, L, K)``; ``z_t`` token
    ids (B, L) or soft inputs (B, L, K); ``sigma`` (B,) is added to the hidden state through a
    small linear map (the causal model ignores it, as the AR objective passes none).
    """

    def __init__(self, vocab_size: int, causal: bool, hidden: int = 32, layers: int = 1):
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(vocab_size, hidden)
        self.sigma_map = nn.Linear(1, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True,
                          bidirectional=not causal)  # fmt: skip
        self.out = nn.Linear(hidden * (1 if causal else 2), vocab_size)

    def forward(self, z_t: Tensor, sigma: Tensor | None = None, **cond: Any) -> Tensor:
        del cond  # no padding support: this backbone is for packed rows
        if z_t.is_floating_point():
            h = z_t.to(self.embed.weight.dtype) @ self.embed.weight  # soft inputs (B, L, K)
        else:
            h = self.embed(z_t)
        if sigma is not None and not self.causal:
            h = h + self.sigma_map(sigma.clamp(max=50.0)[:, None].to(h.dtype))[:, None, :]
        y, _ = self.gru(h)
        return self.out(y)


def tiny_gru(vocab_size: int, causal: bool, **model_config: Any) -> nn.Module:
    """The factory: ``hidden`` and ``layers`` from the config; other fields (the DiT preset)
    are ignored."""
    return TinyGRU(vocab_size, causal, hidden=model_config.get("hidden") or 32,
                   layers=int(model_config.get("layers", 1)))  # fmt: skip


def not_a_module(vocab_size: int, causal: bool, **model_config: Any) -> Any:
    """A broken factory: it returns a plain function, which the loop refuses."""
    return lambda z_t, sigma, **cond: None
