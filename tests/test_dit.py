"""Tests for discdiff.models: the reference DiT, its causal twin and the modules beside it."""

from __future__ import annotations

import ast
import importlib.abc
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import discdiff.models
from discdiff.models import DiT, DiTConfig, KVCache, ParamCount
from discdiff.models import attention as attention_module
from discdiff.models import projection as projection_module
from discdiff.models.attention import attention, flash_attn_available
from discdiff.models.dit import PRESETS
from discdiff.models.projection import vocab_projection
from discdiff.typing import Bag

K = 61  # a vocabulary size no dimension shares, so mixed-up axes fail loudly
B, L = 2, 9


def make(causal: bool = False, randomize: bool = True, seed: int = 0, **overrides) -> DiT:
    """A tiny DiT in eval mode; ``randomize`` replaces the zero inits so outputs are non-trivial."""
    torch.manual_seed(seed)
    config = {"hidden_size": 32, "n_blocks": 2, "n_heads": 4, "cond_dim": 16, "causal": causal}
    model = DiT(DiTConfig(vocab_size=K, **{**config, **overrides})).eval()
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.3 * torch.randn_like(p))
    return model


def ids(seed: int = 1, batch: int = B, length: int = L) -> torch.Tensor:
    return torch.randint(0, K, (batch, length), generator=torch.Generator().manual_seed(seed))


def sigmas(batch: int = B) -> torch.Tensor:
    return torch.tensor([0.3, 2.0, 0.7, 5.0][:batch])


# ----------------------------------------------------------------------------- shapes and dtypes
def test_shapes_and_dtypes_for_every_input_kind():
    model = make()
    x = ids()
    probs = torch.softmax(torch.randn(B, L, K), dim=-1)
    bag = Bag(torch.randint(0, K, (B, L, 3)), torch.rand(B, L, 3))
    for z_t in (x, x.to(torch.int32), probs, probs.double(), bag):
        logits = model(z_t, sigmas())
        assert logits.shape == (B, L, K)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
    assert model.double()(x, sigmas().double()).dtype == torch.float64


def test_causal_twin_needs_no_sigma_and_ignores_it():
    model = make(causal=True)
    x = ids()
    logits = model(x)
    assert logits.shape == (B, L, K) and logits.dtype == torch.float32
    torch.testing.assert_close(model(x, sigmas()), logits, rtol=0, atol=0)
    assert model.sigma_map is None
    assert all(block.adaLN_modulation is None for block in model.blocks)


def test_sigma_conditions_the_output():
    model = make()
    x = ids()
    a = model(x, torch.tensor([0.1, 0.1]))
    b = model(x, torch.tensor([3.0, 3.0]))
    assert (a - b).abs().max() > 1e-3


def test_per_token_levels_condition_each_position():
    """sigma (B, L) constant per row is sigma (B,); a position's own level changes its logits
    (through its adaLN modulation) and, through attention, the other positions'."""
    model = make(num_classes=3).double()
    x = ids()
    s = sigmas().double()
    label = torch.tensor([0, 2])
    per_row = model(x, s, label=label)
    per_token = s.unsqueeze(-1).expand(B, L).clone()
    torch.testing.assert_close(model(x, per_token, label=label), per_row, rtol=1e-12, atol=1e-12)
    hidden = model.hidden_states(x, per_token, label=label)
    weight, bias = model.output_projection()
    torch.testing.assert_close(hidden @ weight.T + bias, per_row, rtol=1e-12, atol=1e-12)
    per_token[:, 0] = 0.0  # position 0 clean context
    moved = model(x, per_token, label=label)
    assert (moved - per_row).abs().amax(-1).min() > 1e-6  # every position sees the change
    assert model.reads_token_levels and not make(causal=True).reads_token_levels
    with pytest.raises((TypeError, ValueError), match="sigma"):
        model(x, torch.zeros(B, L + 1, dtype=torch.float64))


def test_backward_reaches_every_parameter_and_soft_inputs():
    model = make().train()
    probs = torch.softmax(torch.randn(B, L, K), dim=-1).requires_grad_()
    model(probs, sigmas()).square().mean().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- laws
def test_causal_future_tokens_never_change_past_logits():
    model = make(causal=True)
    x = ids()
    base = model(x)
    for cut in (0, 1, 4, L - 1):
        y = x.clone()
        y[:, cut:] = (y[:, cut:] + 1 + torch.arange(L - cut)) % K
        out = model(y)
        torch.testing.assert_close(out[:, :cut], base[:, :cut], rtol=0, atol=1e-6)
        assert (out[:, cut:] - base[:, cut:]).abs().max() > 1e-4


def test_non_causal_attention_sees_the_future():
    model = make()
    x = ids()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % K
    assert (model(x, sigmas())[:, 0] - model(y, sigmas())[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("train", [False, True])
def test_adaln_zero_blocks_are_identities_at_init(train: bool):
    torch.manual_seed(0)
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=32, n_blocks=3, n_heads=4)
    model.train(train)
    seen = []

    def hook(module, args, output):
        seen.append(torch.equal(output, args[0]))

    for block in model.blocks:
        block.register_forward_hook(hook)
    logits = model(ids(), sigmas())
    assert seen == [True] * 3
    # The final adaLN layer and the zero-initialised output projection give zero logits.
    assert torch.equal(logits, torch.zeros_like(logits))


def test_one_hot_soft_input_equals_ids():
    model = make()
    x = ids()
    expected = model(x, sigmas())
    torch.testing.assert_close(model(F.one_hot(x, K).float(), sigmas()), expected)


def test_bag_with_one_weight_one_id_equals_ids():
    model = make()
    x = ids()
    bag = Bag(x[..., None], torch.ones(B, L, 1))
    torch.testing.assert_close(model(bag, sigmas()), model(x, sigmas()))


def test_bag_equals_the_soft_input_it_encodes():
    model = make()
    bag_ids = torch.randint(0, K, (B, L, 4))
    weights = torch.softmax(torch.randn(B, L, 4), dim=-1)
    dense = torch.zeros(B, L, K).scatter_add_(-1, bag_ids, weights)
    # Equal up to float32 summation order.
    got, expected = model(Bag(bag_ids, weights), sigmas()), model(dense, sigmas())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_sdpa_dispatch_matches_explicit_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8) for _ in range(3))
    kk, vv = torch.randn(2, 7, 3, 8), torch.randn(2, 7, 3, 8)

    def reference(q, k, v, causal):
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        if causal:
            n_q, n_k = q.shape[1], k.shape[1]
            allowed = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + n_k - n_q
            scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)

    for causal in (False, True):
        torch.testing.assert_close(attention(q, k, v, causal=causal), reference(q, k, v, causal))
        # Lq < Lk: the queries are the last positions (decoding with a cache).
        got = attention(q, kk, vv, causal=causal)
        torch.testing.assert_close(got, reference(q, kk, vv, causal))


class _BrokenFlashAttn(importlib.abc.MetaPathFinder):
    """Makes ``import flash_attn`` fail the way a wheel built for another CUDA does."""

    def find_spec(self, name, path=None, target=None):
        if name == "flash_attn":
            raise OSError("libcudart.so: cannot open shared object file")
        return None


@pytest.mark.parametrize("how", ["missing", "broken"])
def test_without_flash_attn_dispatch_falls_back_to_sdpa(monkeypatch, how):
    monkeypatch.setattr(attention_module, "_flash_attn", None)  # not looked up yet
    if how == "missing":
        monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    else:
        monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
        monkeypatch.setattr(sys, "meta_path", [_BrokenFlashAttn(), *sys.meta_path])
    assert flash_attn_available() is False
    assert attention_module._flash_attn is False  # the failed lookup is cached
    model = make()
    x = ids()
    auto = model(x, sigmas())
    assert torch.equal(auto, model.set_attention_backend("sdpa")(x, sigmas()))
    with pytest.raises(RuntimeError, match="flash"):
        model.set_attention_backend("flash")(x, sigmas())


def test_an_importable_flash_attn_is_found_and_cpu_tensors_still_use_sdpa(monkeypatch):
    calls = []
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = lambda *args, **kwargs: calls.append(args)
    monkeypatch.setattr(attention_module, "_flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    assert flash_attn_available() is True
    assert attention_module._flash_attn is fake
    model = make()
    expected = model.set_attention_backend("sdpa")(ids(), sigmas())
    assert torch.equal(model.set_attention_backend("auto")(ids(), sigmas()), expected)
    assert calls == []  # flash-attn only takes fp16 / bf16 CUDA tensors


def test_importing_and_running_the_model_leaves_flash_attn_unimported():
    code = (
        "import sys, torch, discdiff, discdiff.models.attention\n"
        "from discdiff.models import DiT, DiTConfig, generate_ar\n"
        "m = DiT(DiTConfig(vocab_size=7, hidden_size=8, n_blocks=1, n_heads=2, causal=True))\n"
        "generate_ar(m, torch.zeros(1, 1, dtype=torch.long), 2)\n"
        "print('flash_attn' in sys.modules)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_blockwise_vocab_projection_equals_linear():
    # On the CPU the output projection runs in blocks of vocabulary rows (K >= 4096).
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, requires_grad=True)
    weight = torch.randn(5000, 16, requires_grad=True)
    bias = torch.randn(5000, requires_grad=True)
    upstream = torch.randn(2, 5, 5000)
    got = vocab_projection(x, weight, bias)
    grads = torch.autograd.grad(got, (x, weight, bias), upstream)
    expected = F.linear(x, weight, bias)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), upstream)
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("max_len", [None, 32])
def test_kv_cache_decoding_equals_the_full_causal_forward(max_len):
    model = make(causal=True)
    x = ids(length=12)
    full = model(x)
    cache = model.new_kv_cache(max_len)
    with torch.no_grad():
        pieces = [model(x[:, :3], kv_cache=cache)]  # prefill a chunk
        pieces += [model(x[:, i : i + 1], kv_cache=cache) for i in range(3, 7)]  # one by one
        pieces.append(model(x[:, 7:], kv_cache=cache))  # a chunk after the cache (masked)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    # reset / crop rewind the cache: recomputing the tail gives the same logits again.
    cache.crop(7)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, 7:], kv_cache=cache), full[:, 7:], rtol=0, atol=1e-5)
    cache.reset()
    with torch.no_grad():
        torch.testing.assert_close(model(x, kv_cache=cache), full, rtol=0, atol=1e-5)


def test_kv_cache_errors():
    with pytest.raises(ValueError, match="causal"):
        make().new_kv_cache()
    with pytest.raises(ValueError, match="causal"):
        make()(ids(), sigmas(), kv_cache=KVCache())
    model = make(causal=True)
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(ids(), kv_cache=cache)
        with pytest.raises(ValueError, match="batch"):
            model(ids(batch=3), kv_cache=cache)
    with pytest.raises(ValueError):
        cache.crop(cache.length + 1)


# ----------------------------------------------------------------------------- compile
def test_torch_compile_matches_eager():
    # backend="aot_eager" traces through dynamo + AOTAutograd like inductor; inductor's C++
    # codegen alone takes > 60 s on a small shared CPU. fullgraph=True: no graph breaks.
    for causal in (False, True):
        model = make(causal=causal)
        sigma = None if causal else sigmas()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        x = ids()
        out = compiled(x, sigma)
        torch.testing.assert_close(out, model(x, sigma))
        out.sum().backward()
        assert model.embed.weight.grad is not None
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, tie: bool):
    model = make(tie_weights=tie)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"] == K
    loaded = DiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if tie:
        assert loaded.final.linear.weight is loaded.embed.weight
    assert torch.equal(loaded(ids(), sigmas()), model(ids(), sigmas()))
    # Overrides that leave the weights alone are allowed.
    assert DiT.from_pretrained(tmp_path / "m", dropout=0.0).config.dropout == 0.0


def test_a_subclass_loads_as_itself(tmp_path):
    # The loaders take the class to build: a subclass's from_pretrained gives the subclass.
    class Tagged(DiT):
        pass

    model = make()
    model.save_pretrained(tmp_path)
    loaded = Tagged.from_pretrained(tmp_path).eval()
    assert type(loaded) is Tagged and type(DiT.from_pretrained(tmp_path)) is DiT
    assert torch.equal(loaded(ids(), sigmas()), model(ids(), sigmas()))


def test_save_load_keeps_bfloat16(tmp_path):
    model = make().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = DiT.from_pretrained(tmp_path)
    assert loaded.embed.weight.dtype == torch.bfloat16
    pairs = zip(model.parameters(), loaded.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        DiT.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiT.from_pretrained(tmp_path)
    make().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="do not match"):
        DiT.from_pretrained(tmp_path, hidden_size=64, n_heads=4)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_blocks": 3}))
    with pytest.raises(ValueError, match="missing"):
        DiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        DiT.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- output padding
def test_the_output_projection_is_padded_and_the_logits_are_exactly_k():
    from discdiff.models.dit import padded_rows

    assert padded_rows(50257) == 50304 and padded_rows(128) == 128 and padded_rows(K) == 128
    model = make()
    assert model.final.linear.weight.shape == (128, 32) and model.final.linear.bias.shape == (128,)
    logits = model(ids(), sigmas())
    assert logits.shape == (B, L, K)
    weight, bias = model.final.linear.weight, model.final.linear.bias
    full = F.linear(model.hidden_states(ids(), sigmas()), weight, bias)  # all 128 rows
    torch.testing.assert_close(logits, full[..., :K])
    # Tied weights share the (K, h) embedding: no padding there.
    tied = make(tie_weights=True)
    assert tied.final.linear.weight.shape == (K, 32) and tied.final.padding_rows == 0
    assert tied(ids(), sigmas()).shape == (B, L, K)
    with torch.device("meta"):
        gpt2 = DiT.from_preset("small", vocab_size=50257)
    assert gpt2.final.linear.weight.shape == (50304, 768)
    assert gpt2.param_count().output == 768 + 50257 + 50257 * 768  # padding rows not counted


def test_padding_draws_no_random_numbers(monkeypatch):
    # Seeded inits (and every draw after them: dropout, data) are those of an unpadded model.
    config = DiTConfig(vocab_size=K, hidden_size=32, n_blocks=2, n_heads=4, cond_dim=16)
    states = []
    for pad in (True, False):
        if not pad:
            monkeypatch.setattr(projection_module, "padded_rows", lambda k: k)
        torch.manual_seed(0)
        model = DiT(config)
        assert model.final.linear.weight.shape[0] == (128 if pad else K)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def test_padding_rows_never_reach_the_logits_nor_get_a_gradient():
    model = make().train()
    with torch.no_grad():
        model.final.linear.weight[K:] = 1e6  # whatever they hold
        model.final.linear.bias[K:] = float("nan")
    logits = model(ids(), sigmas())
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, make().train()(ids(), sigmas()))
    logits.square().mean().backward()
    assert torch.all(model.final.linear.weight.grad[K:] == 0)
    assert torch.all(model.final.linear.bias.grad[K:] == 0)


def test_blockwise_projection_over_padded_rows_equals_linear_over_k_rows():
    torch.manual_seed(0)
    k, rows = 5000, 5120
    x = torch.randn(2, 5, 16, requires_grad=True)
    weight = torch.randn(rows, 16, requires_grad=True)
    bias = torch.randn(rows, requires_grad=True)
    upstream = torch.randn(2, 5, k)
    got = vocab_projection(x, weight, bias, k)
    assert got.shape == (2, 5, k) and got.is_contiguous()  # what softmax wants on the CPU
    grads = torch.autograd.grad(got, (x, weight, bias), upstream)
    expected = F.linear(x, weight[:k], bias[:k])
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), upstream)
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_unpadded_checkpoints_still_load(tmp_path):
    from safetensors.torch import save_file

    model = make()
    with torch.no_grad():
        model.final.linear.weight[K:] = 0.0  # what an unpadded checkpoint implies
        model.final.linear.bias[K:] = 0.0
    old = {n: t.clone() for n, t in model.state_dict().items()}
    old["final.linear.weight"] = old["final.linear.weight"][:K].clone()
    old["final.linear.bias"] = old["final.linear.bias"][:K].clone()
    # A state dict with K rows (older checkpoints, converted reference weights) loads, padded.
    fresh = make(seed=5)
    fresh.load_state_dict(old)
    assert torch.equal(fresh(ids(), sigmas()), model(ids(), sigmas()))
    assert torch.equal(fresh.final.linear.weight[K:], torch.zeros(128 - K, 32))
    # So does a directory written before the padding (K rows in model.safetensors).
    model.save_pretrained(tmp_path)
    save_file(old, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = DiT.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(ids(), sigmas()), model(ids(), sigmas()))
    # A directory written now round-trips bit for bit, padding rows included.
    model.save_pretrained(tmp_path / "new")
    again = DiT.from_pretrained(tmp_path / "new")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(),
                                                  strict=True))  # fmt: skip


# ----------------------------------------------------------------------------- errors
def test_input_errors():
    model = make()
    x = ids()
    with pytest.raises((TypeError, ValueError)):  # jaxtyping: sigma must be (B,)
        model(x, torch.rand(B + 1))
    with pytest.raises((TypeError, ValueError)):
        model(x, torch.rand(B, 1))
    with pytest.raises(ValueError, match="sigma"):
        model(x)
    with pytest.raises(ValueError, match="sigma"):
        model(x, torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="outside"):
        model(x + K, sigmas())
    with pytest.raises(ValueError, match="outside"):
        model(x - K, sigmas())
    with pytest.raises(ValueError, match="K=61"):
        model(torch.softmax(torch.randn(B, L, K + 1), -1), sigmas())
    with pytest.raises(ValueError, match="outside"):
        model(Bag(x[..., None] + K, torch.ones(B, L, 1)), sigmas())
    with pytest.raises((TypeError, ValueError)):  # float ids of the wrong rank
        model(x.float(), sigmas())


def test_config_errors():
    with pytest.raises(ValueError, match="presets"):
        DiT.from_preset("huge", vocab_size=K)
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(vocab_size=K, hidden_size=30, n_blocks=1, n_heads=4)
    with pytest.raises(ValueError, match="even"):
        DiTConfig(vocab_size=K, hidden_size=12, n_blocks=1, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        DiTConfig(vocab_size=1, hidden_size=32, n_blocks=1, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        DiTConfig(vocab_size=K, hidden_size=32, n_blocks=1, n_heads=4, dropout=1.0)
    with pytest.raises(ValueError, match="backend"):
        make().set_attention_backend("xformers")


# ----------------------------------------------------------------------------- sizes
def test_presets_and_parameter_counts():
    assert set(PRESETS) == {"tiny", "small", "medium"}
    with torch.device("meta"):
        small = DiT.from_preset("small", vocab_size=50258)
        tiny = DiT.from_preset("tiny", vocab_size=50258)
        medium = DiT.from_preset("medium", vocab_size=50258)
    # The reference MDLM / Duo DiT "small" at the GPT-2 vocabulary (+ mask): 169.6M.
    assert small.num_parameters() == 169_627_218
    count = small.param_count()
    assert isinstance(count, ParamCount)
    assert count.total == 169_627_218
    assert count.embedding == 50258 * 768
    assert count.non_embedding == small.num_parameters(exclude_embedding=True)
    assert (tiny.config.hidden_size, tiny.config.n_blocks, tiny.config.n_heads) == (256, 8, 8)
    assert (medium.config.hidden_size, medium.config.n_blocks) == (1024, 24)
    assert small.config.cond_dim == 128
    # Tied weights are counted once; the causal twin has no conditioning parameters.
    with torch.device("meta"):
        tied = DiT.from_preset("small", vocab_size=50258, tie_weights=True)
        causal = DiT.from_preset("small", vocab_size=50258, causal=True)
    assert tied.num_parameters() == 169_627_218 - 50258 * 768
    assert causal.param_count().conditioning == 0


def test_parameter_counts_by_part_equal_the_closed_form():
    # Every Linear / LayerNorm of the architecture counted by hand from the config.
    h, c, f, k, blocks = 32, 16, 256, K, 2
    block = 2 * h + 3 * h * h + h * h + (h * 4 * h + 4 * h) + (4 * h * h + h)  # norms qkv out mlp
    conditioning = (f * c + c + c * c + c) + blocks * (c * 6 * h + 6 * h) + (c * 2 * h + 2 * h)
    expected = ParamCount(
        total=k * h + conditioning + blocks * block + h + k + k * h,
        embedding=k * h, conditioning=conditioning, blocks=blocks * block, output=h + k + k * h,
    )  # fmt: skip
    assert make().param_count() == expected
    assert make().num_parameters() == expected.total
    assert make().num_parameters(exclude_embedding=True) == expected.total - k * h
    tied = make(tie_weights=True).param_count()
    assert (tied.output, tied.total) == (h + k, expected.total - k * h)
    causal = make(causal=True).param_count()
    assert causal == ParamCount(k * h + blocks * block + h + k + k * h, k * h, 0,
                                blocks * block, h + k + k * h)  # fmt: skip


def test_param_count_names_a_parameter_outside_the_dit_layout():
    model = make()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'extra.weight' belongs to no part of a DiT"):
        model.param_count()


def test_flops_per_token():
    with torch.device("meta"):
        small = DiT.from_preset("small", vocab_size=50258)
    h, n_blocks = 768, 12
    n = n_blocks * 12 * h * h + h * 50258
    assert small.flops_per_token(1024) == 6 * n + 12 * n_blocks * 1024 * h
    assert small.flops_per_token(1024, training=False) == 2 * n + 4 * n_blocks * 1024 * h


# ----------------------------------------------------------------------------- autocast, scripts
def test_bfloat16_autocast_runs_and_returns_the_autocast_dtype():
    model = make().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids(), sigmas())
    assert logits.dtype == torch.bfloat16
    logits.float().square().mean().backward()
    assert model.embed.weight.grad.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = make().eval()(ids(), sigmas()).float()
    exact = make()(ids(), sigmas())
    assert (low - exact).norm() / exact.norm() < 0.1  # bf16 rounding, amplified


def test_gpu_script_cpu_fallback_runs():
    # benchmarks/gpu_dit.py is meant for a GPU machine; without CUDA it runs 2 tiny steps.
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_dit"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "eager" in done.stdout and "ms/step" in done.stdout


# ----------------------------------------------------------------------------- module layout
PACKAGE = "discdiff.models"


def _models_imports() -> dict[str, set[str]]:
    """discdiff.models' imports of its own modules, module level or inside functions alike."""
    root = Path(discdiff.models.__file__).parent
    modules = {path.stem: path for path in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE + "."):
                        targets.add(alias.name.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and str(node.module).startswith(PACKAGE):
                parts = str(node.module).split(".")
                for alias in node.names:
                    private = alias.name.startswith("_")
                    assert not private, f"{name}.py imports the private {node.module}.{alias.name}"
                    sub = parts[2] if len(parts) > 2 else alias.name
                    targets.add(sub if sub in modules else "__init__")
    return graph


def test_models_import_no_circle_no_private_names_and_stay_short():
    graph = _models_imports()
    assert "reference" in graph["dit"] and "dit" in graph["decode"]  # the graph is read at all
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import circle: " + " -> ".join((*path, name))
        if name not in done:
            for target in sorted(graph[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
    root = Path(discdiff.models.__file__).parent
    lengths = {p.name: len(p.read_text().splitlines()) for p in root.glob("*.py")}
    assert max(lengths.values()) <= 500, lengths
