"""Tests for the DiT as a block-diffusion model (SPEC §10): the mask, the training pass over
[z_t ; x_0], the KV cache of the clean blocks (denoising calls and prefill) and the kernels."""

from __future__ import annotations

import warnings

import pytest
import torch

from discdiff.models import DiT, DiTConfig
from discdiff.models import block_mask as block_mask_module
from discdiff.models.attention import attention
from discdiff.models.block_mask import (
    AttentionMask,
    flex_available,
    mask_kernel,
    prefill_mask,
    training_attention_mask,
    training_mask,
)

K = 61  # a vocabulary size no dimension shares
B = 2
TOL = {"rtol": 1e-10, "atol": 1e-11}  # float64: equal to rounding


def make(block_size: int | None, seed: int = 0, **overrides) -> DiT:
    """A tiny float64 DiT in eval mode with random (not zero-initialised) weights."""
    torch.manual_seed(seed)
    config = {"hidden_size": 32, "n_blocks": 2, "n_heads": 4, "cond_dim": 16}
    model = DiT(DiTConfig(vocab_size=K, block_size=block_size, **{**config, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if "norm" in name else 0.3
            p.copy_(("norm" in name) + scale * torch.randn_like(p))
    return model.double().eval()


def ids(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, K, (B, length), generator=torch.Generator().manual_seed(seed))


def levels(length: int, seed: int = 2) -> torch.Tensor:
    """Per-token noise levels sigma (B, L) in (0.1, 3.1), float64."""
    gen = torch.Generator().manual_seed(seed)
    return 0.1 + 3 * torch.rand(B, length, generator=gen, dtype=torch.float64)


def allowed_by_definition(length: int, b: int) -> torch.Tensor:
    """SPEC §10's mask, pair by pair: index i < L is noisy position i, L + i clean position i."""
    n = 2 * length
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            q_clean, k_clean = q >= length, k >= length
            qb, kb = (q % length) // b, (k % length) // b
            if not q_clean and not k_clean:
                out[q, k] = qb == kb  # noisy block i -> noisy block i
            elif not q_clean and k_clean:
                out[q, k] = kb < qb  # noisy block i -> clean blocks j < i
            elif q_clean and k_clean:
                out[q, k] = kb <= qb  # clean block i -> clean blocks j <= i
    return out


# ----------------------------------------------------------------------------- config
def test_block_size_is_validated_and_reaches_the_model():
    for bad in (0, -2, 2.0, True, "4"):
        with pytest.raises(ValueError, match="block_size"):
            DiTConfig(vocab_size=K, hidden_size=32, n_blocks=1, n_heads=4, block_size=bad)
    with pytest.raises(ValueError, match="block_size.*causal"):
        DiTConfig(vocab_size=K, hidden_size=32, n_blocks=1, n_heads=4, block_size=4, causal=True)
    with torch.device("meta"):
        model = DiT.from_preset("tiny", vocab_size=K, block_size=16)
        plain = DiT.from_preset("tiny", vocab_size=K)
    assert model.block_size == model.config.block_size == 16 and model.reads_token_levels
    assert plain.block_size is None and plain.config.block_size is None


def test_save_load_keeps_the_block_size(tmp_path):
    model = make(block_size=3)
    model.save_pretrained(tmp_path / "m")
    loaded = DiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.block_size == 3 and loaded.config == model.config
    z, x, s = ids(6), ids(6, seed=3), levels(6)
    assert torch.equal(loaded(z, s, x_0=x), model(z, s, x_0=x))
    # The block size adds no weights: the same file loads as another block size.
    assert DiT.from_pretrained(tmp_path / "m", block_size=6).block_size == 6


# ----------------------------------------------------------------------------- the mask
@pytest.mark.parametrize(("length", "b"), [(1, 1), (6, 1), (6, 2), (6, 3), (6, 6), (8, 4)])
def test_the_mask_is_the_definition(length: int, b: int):
    mask = training_mask(length, b, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (2 * length, 2 * length)
    assert torch.equal(mask, allowed_by_definition(length, b))
    assert training_mask(length, b, torch.device("cpu")) is mask  # built once, then cached


@pytest.mark.parametrize(("start", "n", "b"), [(0, 7, 3), (3, 5, 3), (4, 5, 3), (2, 1, 3)])
def test_the_prefill_mask_is_block_causal_by_absolute_position(start: int, n: int, b: int):
    mask = prefill_mask(start, n, b, torch.device("cpu"))
    expected = torch.tensor([[k // b <= (start + q) // b for k in range(start + n)]
                             for q in range(n)])  # fmt: skip
    if mask is None:  # inside one block: every key allowed, so no mask at all
        assert expected.all() and start // b == (start + n - 1) // b
    else:
        assert torch.equal(mask, expected) and not expected.all()


# ----------------------------------------------------------------------------- the training pass
@pytest.mark.parametrize("per_token", [False, True])
def test_block_size_l_is_the_ordinary_model(per_token: bool):
    """b = L: the noisy copy sees itself only, so the logits are those of the ordinary DiT with
    the same weights on z_t alone, whatever x_0 holds."""
    length = 6
    model, plain = make(block_size=length), make(block_size=None)
    plain.load_state_dict(model.state_dict())
    z, x = ids(length), ids(length, seed=3)
    s = levels(length) if per_token else levels(length)[:, 0]
    expected = plain(z, s)
    torch.testing.assert_close(model(z, s, x_0=x), expected, **TOL)
    torch.testing.assert_close(model(z, s), expected, **TOL)  # one block without context


@pytest.mark.parametrize("b", [1, 2, 3])
def test_block_i_reads_its_noisy_block_and_the_clean_blocks_before_it(b: int):
    length = 6
    model = make(block_size=b)
    z, x, s = ids(length), ids(length, seed=3), levels(length)
    base = model(z, s, x_0=x)
    for i in range(length // b):
        inside, after = slice(i * b, (i + 1) * b), slice(i * b, length)
        z2, x2, s2 = z.clone(), x.clone(), s.clone()
        z2[:, (i + 1) * b :] = (z2[:, (i + 1) * b :] + 1) % K  # later noisy blocks
        z2[:, : i * b] = (z2[:, : i * b] + 1) % K  # earlier noisy blocks
        s2[:, : i * b] += 1.0  # the levels of the other blocks
        s2[:, (i + 1) * b :] += 1.0
        x2[:, after] = (x2[:, after] + 1) % K  # clean blocks j >= i
        torch.testing.assert_close(model(z2, s2, x_0=x2)[:, inside], base[:, inside], **TOL)
        if i > 0:  # and the clean blocks before it are read
            x3 = x.clone()
            x3[:, i * b - 1] = (x3[:, i * b - 1] + 1) % K
            assert (model(z, s, x_0=x3)[:, inside] - base[:, inside]).abs().max() > 1e-6


def test_hidden_states_and_padding_in_the_training_pass():
    """hidden_states carries x_0 (the fused losses' path); padding the end of every row leaves
    the real positions' logits as without the padding (whole blocks padded)."""
    model = make(block_size=2)
    z, x, s = ids(6), ids(6, seed=3), levels(6)
    logits = model(z, s, x_0=x)
    hidden = model.hidden_states(z, s, x_0=x)
    weight, bias = model.output_projection()
    torch.testing.assert_close(hidden @ weight.T + bias, logits, **TOL)
    real = torch.ones(B, 6, dtype=torch.bool)
    real[:, 4:] = False
    padded = model(z, s, x_0=x, padding_mask=real)
    torch.testing.assert_close(padded[:, :4], model(z[:, :4], s[:, :4], x_0=x[:, :4]), **TOL)
    z2 = z.clone()
    z2[:, :2] = (z2[:, :2] + 1) % K  # padding does not turn the mask off: block 1 stays alone
    torch.testing.assert_close(model(z2, s, x_0=x, padding_mask=real)[:, 2:4], padded[:, 2:4],
                               **TOL)  # fmt: skip


def test_the_training_pass_trains_every_parameter():
    model = make(block_size=2).train()
    model(ids(4), levels(4), x_0=ids(4, seed=3)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


# ----------------------------------------------------------------------------- the cache
def uncached_last_block(model: DiT, clean: torch.Tensor, z: torch.Tensor, s: torch.Tensor,
                        **cond) -> torch.Tensor:  # fmt: skip
    """The recompute path: the training pass on [clean ; z] with x_0 = [clean ; z] (block k of
    x_0 is never read), the logits of the last len(z) positions."""
    prefix = torch.cat([clean, z], dim=1)
    sigma = torch.cat([torch.zeros_like(clean, dtype=s.dtype), s], dim=1)
    return model(prefix, sigma, x_0=prefix, **cond)[:, clean.shape[1] :]


@pytest.mark.parametrize(("b", "labels"), [(1, False), (2, False), (3, True)])
def test_cached_logits_equal_the_training_pass_at_every_block(b: int, labels: bool):
    length = 4 * b
    model = make(block_size=b, num_classes=3 if labels else None)
    cond = {"label": torch.tensor([0, 3])} if labels else {}
    x, z, s = ids(length), ids(length, seed=3), levels(length)
    cache = model.new_kv_cache()
    with torch.no_grad():
        for k in range(length // b):
            block = slice(k * b, (k + 1) * b)
            cached = model(z[:, block], s[:, block], kv_cache=cache, **cond)
            assert cache.length == k * b  # a denoising call leaves the cache as it was
            again = model(z[:, block], s[:, block], kv_cache=cache, **cond)
            expected = uncached_last_block(model, x[:, : k * b], z[:, block], s[:, block], **cond)
            torch.testing.assert_close(cached, expected, **TOL)
            assert torch.equal(again, cached)  # the scratch rows it wrote did not leak
            model.prefill(x[:, block], cache, **cond)  # the finished block joins the context
            assert cache.length == (k + 1) * b


def test_a_prompt_of_one_and_a_half_blocks_then_generation():
    """Protocol: prefill the whole blocks of the prompt (several at once), the remaining clean
    tokens sit at level 0 at the start of the first generated block; later blocks as usual."""
    b, length = 4, 16
    model = make(block_size=b)
    x, z, s = ids(length), ids(length, seed=3), levels(length)
    prompt = 6  # 1.5 blocks
    s[:, 4:prompt] = 0.0  # the clamped prompt tokens inside block 1
    z[:, 4:prompt] = x[:, 4:prompt]
    cache = model.new_kv_cache(max_len=length)
    with torch.no_grad():
        model.prefill(x[:, :4], cache)
        for k in range(1, 4):
            block = slice(k * b, (k + 1) * b)
            cached = model(z[:, block], s[:, block], kv_cache=cache)
            expected = uncached_last_block(model, x[:, : k * b], z[:, block], s[:, block])
            torch.testing.assert_close(cached, expected, **TOL)
            model.prefill(x[:, block], cache)
        # A prompt of several blocks prefilled in one call equals block by block.
        whole = model.new_kv_cache()
        model.prefill(x[:, :12], whole)
        cached = model(z[:, 12:], s[:, 12:], kv_cache=whole)
        torch.testing.assert_close(cached, uncached_last_block(model, x[:, :12], z[:, 12:],
                                                               s[:, 12:]), **TOL)  # fmt: skip


def test_crop_and_reset_rewind_the_block_cache():
    b = 2
    model = make(block_size=b)
    x, z, s = ids(6), ids(6, seed=3), levels(6)
    cache = model.new_kv_cache()
    with torch.no_grad():
        model.prefill(x[:, :4], cache)
        cache.crop(2)  # forget block 1: block 1 is denoised over block 0 alone
        cached = model(z[:, 2:4], s[:, 2:4], kv_cache=cache)
        expected = uncached_last_block(model, x[:, :2], z[:, 2:4], s[:, 2:4])
        torch.testing.assert_close(cached, expected, **TOL)
        cache.reset()  # positions restart at 0 (the sliding window)
        model.prefill(x[:, 4:6], cache)
        cached = model(z[:, :2], s[:, :2], kv_cache=cache)
        expected = uncached_last_block(model, x[:, 4:6], z[:, :2], s[:, :2])
        torch.testing.assert_close(cached, expected, **TOL)


# ----------------------------------------------------------------------------- kernels
def test_the_kernel_dispatch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mask_kernel(cpu) == "sdpa" and mask_kernel(cpu, "sdpa") == "sdpa"
    assert mask_kernel(cuda, "sdpa") == "sdpa"
    assert mask_kernel(cuda) == ("flex" if flex_available() else "sdpa")
    with pytest.raises(RuntimeError, match="flash"):
        mask_kernel(cuda, "flash")
    monkeypatch.setattr(block_mask_module, "_flex", False)  # a torch without flex_attention
    assert mask_kernel(cuda) == "sdpa"
    assert training_attention_mask(4, 2, cpu).flex is None


@pytest.mark.skipif(not flex_available(), reason="flex_attention is not importable")
def test_flex_attention_equals_sdpa_with_the_boolean_mask(monkeypatch):
    """flex_attention runs on the CPU (eager, unfused): its output under the block mask equals
    SDPA's under the boolean mask, in the kernel and through the model."""
    length, b = 6, 2
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2 * length, 4, 8, generator=gen, dtype=torch.float64)
               for _ in range(3))  # fmt: skip
    model = make(block_size=b)
    z, x, s = ids(length), ids(length, seed=3), levels(length)
    sdpa_logits = model(z, s, x_0=x)
    monkeypatch.setattr(block_mask_module, "mask_kernel", lambda device, backend="auto": "flex")
    mask = training_attention_mask(length, b, torch.device("cpu"))
    assert mask.flex is not None
    with warnings.catch_warnings(), torch.no_grad():  # flex has no backward on the CPU
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
        flex = attention(q, k, v, causal=False, attn_mask=mask)
        flex_logits = model(z, s, x_0=x)
    sdpa = attention(q, k, v, causal=False, attn_mask=AttentionMask(mask.dense))
    torch.testing.assert_close(flex, sdpa, **TOL)
    torch.testing.assert_close(flex_logits, sdpa_logits, **TOL)


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_argument_and_the_fix():
    plain, model = make(block_size=None), make(block_size=2)
    z, s = ids(4), levels(4)
    with pytest.raises(ValueError, match="x_0.*block_size"):
        plain(z, s, x_0=z)
    with pytest.raises(ValueError, match="L=3.*multiple of block_size=2"):
        model(ids(3), levels(3), x_0=ids(3))
    with pytest.raises(TypeError, match="x_0"):
        model(z, s, x_0=ids(6))
    with pytest.raises(ValueError, match="more than block_size=2.*x_0"):
        model(z, s)
    with pytest.raises(ValueError, match="x_0.*kv_cache"):
        model(z, s, x_0=z, kv_cache=model.new_kv_cache())
    with pytest.raises(ValueError, match="more than block_size=2.*kv_cache"):
        model(z, s, kv_cache=model.new_kv_cache())
    with pytest.raises(ValueError, match="prefill.*block_size"):
        plain.prefill(z, model.new_kv_cache())
    with pytest.raises(ValueError, match="causal.*block_size"):
        plain.new_kv_cache()
    with pytest.raises(RuntimeError, match="flash"):
        model.set_attention_backend("flash")(z, s, x_0=z)


# ----------------------------------------------------------------------------- the benchmark
def test_the_block_benchmark_times_both_paths_at_the_first_and_last_block():
    from benchmarks import bench_blocks

    assert bench_blocks.block_indices(64, 5) == [0, 16, 32, 47, 63]
    assert bench_blocks.block_indices(3, 5) == [0, 1, 2]
    model = bench_blocks.block_dit(2, vocab_size=K, preset="tiny", layers=1, hidden_size=32,
                                   n_heads=2)  # fmt: skip
    timings = bench_blocks.measure(model, length=8, steps=2, points=2, repeats=1)
    assert [t.index for t in timings] == [0, 3] and all(t.block_size == 2 for t in timings)
    assert all(t.cached > 0 and t.recompute > 0 and t.cached_wall > 0 for t in timings)
    rows = bench_blocks.summary_rows(timings, "tiny")
    assert [r["target"] for r in rows] == ["-", "<= 1.2", "-"]  # b = 16 carries the speed-up
    assert rows[1]["ratio"] == pytest.approx(timings[1].cached / timings[0].cached)
    lines = bench_blocks.table(timings).splitlines()
    assert len(lines) == 3 and lines[2].split()[:2] == ["2", "3"]  # b, block index
