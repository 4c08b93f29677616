"""DiffusionGemma as a discdiff block denoiser, on a tiny random config on the CPU: the
protocol (cache growth, the decoder called NFE times, the cache left alone by a denoising
call, the recompute pass), self-conditioning, and the tokens of ``model.generate``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from discdiff.adapters.diffusion_gemma import DiffusionGemmaDenoiser  # noqa: E402
from discdiff.samplers import Predictor, TimeGrid, run  # noqa: E402
from discdiff.samplers.policies import EntropyBoundStep  # noqa: E402
from discdiff.schedules import LogLinearSchedule  # noqa: E402
from tests.diffusion_gemma_tiny import tiny_model  # noqa: E402

K, B = 64, 2
PROMPT = torch.tensor([[2, 5, 6, 7, 9], [2, 8, 9, 10, 11]])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _sample(den, steps, blocks, calls=None):
    """The minimal block loop: per block, a uniform canvas, ``steps`` entropy-bound steps of
    ``run`` with generate's settings, then ``prefill`` of the finished block."""
    cache = den.new_kv_cache()
    den.prefill(PROMPT, cache)
    grid = TimeGrid.build(LogLinearSchedule(), steps, tail="none")
    out, lengths = [], [cache.length]
    for _ in range(blocks):
        step = EntropyBoundStep(entropy_bound=0.1, feedback=den.carry)
        z = torch.randint(0, K, (B, den.block_size))
        predict = Predictor(den, K, cond={"kv_cache": cache}, time_conditioned=False)
        z = run(predict, step, grid, z, generator=None)
        if calls is not None:
            calls.append((predict.calls, step.tally.committed))
        out.append(z)
        den.prefill(z, cache)
        lengths.append(cache.length)
    return torch.cat(out, 1), lengths


def test_tokens_equal_generate_for_a_fixed_seed(model):
    """Same seed, same settings (entropy bound 0.1, temperatures 0.8 -> 0.4, N steps per
    canvas; generate's adaptive stop switched off by a stability window longer than N): the
    same tokens. Draw order matches: the canvas's randint, then per step multinomial and
    randint, from torch's global generator."""
    steps = 4
    torch.manual_seed(1)
    ref = model.generate(PROMPT, max_new_tokens=16, max_denoising_steps=steps,
                         stability_threshold=steps + 1)  # fmt: skip
    torch.manual_seed(1)
    ours, _ = _sample(DiffusionGemmaDenoiser(model), steps, 2)
    assert torch.equal(ours, ref.sequences[:, PROMPT.shape[1] :])


def test_cache_grows_one_canvas_per_block_and_decoder_runs_nfe_times(model):
    den = DiffusionGemmaDenoiser(model)
    decoder_calls = []
    hook = model.model.decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    try:
        calls = []
        torch.manual_seed(0)
        _, lengths = _sample(den, 5, 3, calls)
    finally:
        hook.remove()
    assert lengths == [5, 13, 21, 29]
    assert [c for c, _ in calls] == [5, 5, 5] and len(decoder_calls) == 15
    assert all(committed >= 5 * B for _, committed in calls)  # at least a token a row a call


def test_denoising_call_leaves_the_cache_and_carries_self_conditioning(model):
    den = DiffusionGemmaDenoiser(model)
    cache = den.new_kv_cache()
    den.prefill(PROMPT, cache)
    seen = cache.hf.get_seq_length(1)
    z = torch.randint(0, K, (B, 8), generator=torch.Generator().manual_seed(0))
    sigma = torch.zeros(B)
    with torch.no_grad():
        first = den(z, sigma, kv_cache=cache)
        second = den(z, sigma, kv_cache=cache)  # self-conditioned on `first`
        den.carry(torch.zeros_like(first))
        flat = den(z, sigma, kv_cache=cache)
        sc = torch.zeros_like(first)
        sc_direct = model(decoder_input_ids=z, cache=cache.hf, self_conditioning_logits=sc,
                          decoder_position_ids=torch.arange(5, 13)[None]).logits  # fmt: skip
    assert cache.length == 5 and cache.hf.get_seq_length(1) == seen
    assert not torch.allclose(first, second)
    torch.testing.assert_close(flat, sc_direct, rtol=1e-5, atol=1e-5)
    den.prefill(z, cache)  # a new canvas starts without self-conditioning
    with torch.no_grad():
        z2 = torch.randint(0, K, (B, 8), generator=torch.Generator().manual_seed(1))
        fresh = den(z2, sigma, kv_cache=cache)
        none = model(decoder_input_ids=z2, cache=cache.hf,
                     decoder_position_ids=torch.arange(13, 21)[None]).logits  # fmt: skip
    torch.testing.assert_close(fresh, none, rtol=1e-5, atol=1e-5)


def test_recompute_pass_equals_the_cached_calls(model):
    den = DiffusionGemmaDenoiser(model)
    g = torch.Generator().manual_seed(2)
    z, x = torch.randint(0, K, (B, 16), generator=g), torch.randint(0, K, (B, 16), generator=g)
    with torch.no_grad():
        full = den(z, torch.zeros(B), x_0=x)
        cache = den.new_kv_cache()
        den.prefill(torch.full((B, 1), 2), cache)
        a = den(z[:, :8], torch.zeros(B), kv_cache=cache)
        den.prefill(x[:, :8], cache)
        b = den(z[:, 8:], torch.zeros(B), kv_cache=cache)
    assert full.shape == (B, 16, K)
    torch.testing.assert_close(full, torch.cat([a, b], 1), rtol=0, atol=0)
    # gradients: the recompute pass trains through the encoded context too (prefill does not)
    weight = model.model.decoder.layers[0].self_attn.k_proj.weight  # tied with the encoder's

    def grad_of_second_block(logits):
        model.zero_grad(set_to_none=True)
        logits[:, 8:].logsumexp(-1).sum().backward()
        return weight.grad.clone()

    through_context = grad_of_second_block(den(z, torch.zeros(B), x_0=x))
    cache = den.new_kv_cache()
    den.prefill(torch.full((B, 1), 2), cache)
    den.prefill(x[:, :8], cache)
    decoder_only = grad_of_second_block(
        torch.cat([a, den(z[:, 8:], torch.zeros(B), kv_cache=cache)], 1)
    )
    model.zero_grad(set_to_none=True)
    assert not torch.allclose(through_context, decoder_only)


def test_protocol_attributes_and_errors(model):
    den = DiffusionGemmaDenoiser(model)
    assert (den.block_size, den.vocab_size) == (8, K)
    assert den.reads_token_levels is True and den.parameterization == "posterior"
    with pytest.raises(TypeError, match="DiffusionGemmaForBlockDiffusion"):
        DiffusionGemmaDenoiser(torch.nn.Linear(2, 2))
    cache = den.new_kv_cache()
    with pytest.raises(ValueError, match="carry"):
        den.carry(torch.zeros(B, 8, K))
    with pytest.raises(ValueError, match="prefill"):
        den(torch.zeros(B, 8, dtype=torch.long), torch.zeros(B), kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache="):
        den(torch.zeros(B, 8, dtype=torch.long), torch.zeros(B))
    den.prefill(PROMPT, cache)
    with pytest.raises(ValueError, match="block_size=8"):
        den(torch.zeros(B, 9, dtype=torch.long), torch.zeros(B), kv_cache=cache)
    with pytest.raises(ValueError, match="multiple"):
        den(torch.zeros(B, 12, dtype=torch.long), torch.zeros(B), x_0=torch.zeros(B, 12).long())
    cache.crop(3)
    assert cache.length == 3 and cache.hf.get_seq_length(1) == 3
