"""Tests for discdiff.models.decode: autoregressive generation with and without the KV cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discdiff.models import DiT, DiTConfig, generate_ar
from discdiff.samplers import sample_categorical_logits
from discdiff.testing import chi_square_p

K = 61


def causal_dit(seed: int = 0) -> DiT:
    """A tiny causal DiT in eval mode with random weights (the zero inits give flat logits)."""
    torch.manual_seed(seed)
    config = DiTConfig(vocab_size=K, hidden_size=32, n_blocks=2, n_heads=4, causal=True)
    model = DiT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model


def prompt(batch: int = 3, length: int = 4) -> torch.Tensor:
    return torch.randint(0, K, (batch, length), generator=torch.Generator().manual_seed(1))


class MarkovLM(nn.Module):
    """A causal LM whose next-token law is a fixed Markov chain: logits at i = log T[x_i]."""

    def __init__(self, transition: torch.Tensor, with_cache: bool = False):
        super().__init__()
        self.log_t = nn.Parameter(transition.log(), requires_grad=False)
        self.fed: list[int] = []  # lengths of the inputs, to see what generate_ar feeds
        if with_cache:
            self.new_kv_cache = lambda max_len: object()  # the chain needs no memory

    def forward(self, ids: torch.Tensor, kv_cache: object = None) -> torch.Tensor:
        self.fed.append(ids.shape[1])
        return self.log_t[ids]  # (B, L, K)


TRANSITION = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.45, 0.05, 0.5]])


# ----------------------------------------------------------------------------- cache = no cache
@pytest.mark.parametrize(
    "options",
    [{}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.8}, {"top_k": 20, "top_p": 0.9}],
)
def test_cached_decoding_equals_recomputing_the_whole_prefix(options):
    model, start, n = causal_dit(), prompt(), 16
    cached = generate_ar(model, start, n, generator=torch.Generator().manual_seed(2), **options)
    # The reference: the full prefix through the model at every step, one exact draw each.
    g = torch.Generator().manual_seed(2)
    expected = start.clone()
    with torch.no_grad():
        for _ in range(n):
            last = model(expected)[:, -1] / options.get("temperature", 1.0)
            filters = {k: v for k, v in options.items() if k != "temperature"}
            token = sample_categorical_logits(last, generator=g, **filters)
            expected = torch.cat([expected, token[:, None]], dim=1)
    assert torch.equal(cached, expected)
    uncached = generate_ar(
        model, start, n, generator=torch.Generator().manual_seed(2), use_cache=False, **options
    )
    assert torch.equal(uncached, expected)


def test_the_cache_is_fed_the_prompt_once_then_one_token_per_step():
    cached, plain = MarkovLM(TRANSITION, with_cache=True), MarkovLM(TRANSITION)
    start = torch.tensor([[0, 1], [2, 2]])
    a = generate_ar(cached, start, 4, generator=torch.Generator().manual_seed(0))
    b = generate_ar(plain, start, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert cached.fed == [2, 1, 1, 1]
    assert plain.fed == [2, 3, 4, 5]


def test_output_keeps_the_prompt_and_follows_the_generator():
    model, start = causal_dit(), prompt()
    out = generate_ar(model, start.int(), 5, generator=torch.Generator().manual_seed(3))
    assert out.shape == (3, 9) and out.dtype == torch.long
    assert torch.equal(out[:, :4], start)
    assert ((0 <= out) & (out < K)).all()
    again = generate_ar(model, start, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = generate_ar(model, start, 5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)
    assert torch.equal(generate_ar(model, start, 0), start)


def test_top_k_one_is_greedy_decoding():
    model, start = causal_dit(), prompt()
    out = generate_ar(model, start, 6, top_k=1)
    with torch.no_grad():
        greedy = model(out[:, :-1]).argmax(-1)[:, 3:]  # position i predicts token i + 1
    assert torch.equal(out[:, 4:], greedy)


# ----------------------------------------------------------------------------- exact law
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_draws_follow_the_markov_chain_law(temperature):
    # Two steps from x_0 = 2: P(x_1 = i, x_2 = j) = Q[2, i] Q[i, j], Q ∝ T^(1 / temperature).
    n = 30_000
    q = TRANSITION.double() ** (1 / temperature)
    q = q / q.sum(-1, keepdim=True)
    start = torch.full((n, 1), 2)
    g = torch.Generator().manual_seed(5)
    out = generate_ar(MarkovLM(TRANSITION), start, 2, temperature=temperature, generator=g)
    law = (q[2][:, None] * q).flatten()
    assert chi_square_p(out[:, 1] * 3 + out[:, 2], law) > 1e-4


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_errors_naming_the_argument():
    model, start = causal_dit(), prompt()
    bad_calls = [
        ({"prompt": start[0]}, ValueError, "prompt"),  # (P,) instead of (B, P)
        ({"prompt": start[:, :0]}, ValueError, "prompt"),  # no token to start from
        ({"prompt": start.float()}, TypeError, "prompt"),
        ({"prompt": start + K}, ValueError, "prompt"),
        ({"prompt": start - K}, ValueError, "prompt"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": True}, ValueError, "max_new_tokens"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, ValueError, "temperature"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
    ]
    for kwargs, error, name in bad_calls:
        call = {"prompt": start, "max_new_tokens": 3, **kwargs}
        with pytest.raises(error, match=name):
            generate_ar(model, call.pop("prompt"), call.pop("max_new_tokens"), **call)
    diffusion = DiT(DiTConfig(vocab_size=K, hidden_size=32, n_blocks=1, n_heads=4))
    with pytest.raises(ValueError, match="causal"):
        generate_ar(diffusion, start, 3)
