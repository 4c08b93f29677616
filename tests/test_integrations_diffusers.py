"""discdiff.integrations.diffusers.DuoScheduler: diffusers' scheduler contract, token for token
``sample_uniform`` under a plain loop, config round trip, and diffusers' DiffusionGemmaPipeline
end to end with a tiny random model."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

pytest.importorskip("diffusers")

from discdiff.integrations.diffusers import DuoScheduler  # noqa: E402
from discdiff.samplers import nfe, sample_uniform  # noqa: E402
from discdiff.schedules import CosineSchedule, LogLinearSchedule  # noqa: E402
from discdiff.testing import ExactDenoiser, MarkovChain  # noqa: E402

K, B, L = 5, 6, 7


@pytest.fixture(scope="module")
def toy():
    return ExactDenoiser(MarkovChain.peaked(K, seed=3))


def _plain_loop(model, scheduler, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, K, (B * L,), generator=g).view(B, L)
    for i in scheduler.timesteps:
        logits = model(z, scheduler.sigmas[i].expand(B))
        z = scheduler.step(logits, i, z, generator=g).prev_sample
    return z


@pytest.mark.parametrize("tail", ["greedy", "map", "none"])
@pytest.mark.parametrize("kappa", [None, 0.5])
def test_plain_loop_equals_sample_uniform(toy, tail, kappa):
    steps = 5
    scheduler = DuoScheduler(kappa=kappa, tail=tail)
    scheduler.set_timesteps(nfe(steps, tail))
    ours = _plain_loop(toy, scheduler, seed=11)
    ref = sample_uniform(toy, B, L, steps, schedule=LogLinearSchedule(), vocab_size=K, tail=tail,
                         kappa=kappa, generator=torch.Generator().manual_seed(11))  # fmt: skip
    assert torch.equal(ours, ref)


def test_constructible_with_no_arguments_and_config_round_trip(tmp_path):
    default = DuoScheduler()
    assert default.config.tail == "greedy" and default.config.kappa is None
    assert default.config.schedule == LogLinearSchedule().to_dict()
    scheduler = DuoScheduler(schedule=CosineSchedule(), kappa=0.25, tail="map", t_min=1e-3,
                             parameterization="posterior")  # fmt: skip
    scheduler.save_config(tmp_path)
    loaded = DuoScheduler.from_pretrained(tmp_path)

    def settings(s):
        return {k: v for k, v in s.config.items() if not k.startswith("_")}

    assert settings(loaded) == settings(scheduler) and settings(loaded)["kappa"] == 0.25
    assert loaded.schedule == CosineSchedule()
    loaded.set_timesteps(4)
    scheduler.set_timesteps(4)
    assert torch.equal(loaded.sigmas, scheduler.sigmas) and len(loaded.timesteps) == 4
    assert loaded.times[-1].item() == pytest.approx(1e-3)


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="tail"):
        DuoScheduler(tail="argmax")
    with pytest.raises(ValueError, match="parameterization"):
        DuoScheduler(parameterization="logits")
    with pytest.raises(ValueError, match="kappa"):
        DuoScheduler(kappa=1.5)
    with pytest.raises(ValueError, match="kappa"):
        DuoScheduler(kappa="psi")
    with pytest.raises(ValueError, match="schedule"):
        DuoScheduler(schedule=3)
    with pytest.raises(ValueError, match="num_inference_steps"):
        DuoScheduler().set_timesteps(1)
    scheduler = DuoScheduler(num_inference_steps=3)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(torch.zeros(1, 2, K), 3, torch.zeros(1, 2, dtype=torch.long))


def test_posterior_parameterization_converts_before_the_step(toy):
    """A posterior model (x_hat shifted by Bayes at z_t) through parameterization="posterior"
    samples the same tokens as its x_hat twin."""
    from discdiff.parameterization import posterior_from_x_hat

    def posterior_model(z, sigma):
        return posterior_from_x_hat(toy(z, sigma).double(), z, sigma.double(), K).float()

    a, b = DuoScheduler(tail="map"), DuoScheduler(tail="map", parameterization="posterior")
    a.set_timesteps(5)
    b.set_timesteps(5)
    assert torch.equal(_plain_loop(toy, a, 3), _plain_loop(posterior_model, b, 3))


class _Processor:
    """The two calls DiffusionGemmaPipeline makes of a processor, without a tokenizer file:
    a chat template of fixed ids (BOS then one id per character, mod the vocabulary)."""

    eos_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def apply_chat_template(self, messages, **kwargs):
        text = messages[0]["content"]
        ids = torch.tensor([[2] + [5 + ord(c) % (self.vocab_size - 10) for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def batch_decode(self, sequences, **kwargs):
        return [" ".join(map(str, s.tolist())) for s in sequences]


def _bridge_cache_keyword(monkeypatch):
    """diffusers 0.42's pipeline calls the decoder's mask builder with ``past_key_values=``,
    which transformers 5.25 renamed ``cache`` on this static method (its forwards still accept
    both): rename the keyword and call transformers' own builder, nothing else."""
    from transformers.models.diffusion_gemma import modeling_diffusion_gemma as mdg

    build = mdg.DiffusionGemmaDecoderModel.create_diffusion_decoder_attention_mask
    if "past_key_values" in inspect.signature(build).parameters:
        return

    def renamed(*args, past_key_values=None, **kwargs):
        kwargs.setdefault("cache", past_key_values)
        return build(*args, **kwargs)

    monkeypatch.setattr(mdg.DiffusionGemmaDecoderModel, "create_diffusion_decoder_attention_mask",
                        staticmethod(renamed))  # fmt: skip


def test_runs_inside_diffusion_gemma_pipeline(monkeypatch):
    pytest.importorskip("transformers")
    from diffusers import DiffusionGemmaPipeline

    from tests.diffusion_gemma_tiny import tiny_model

    _bridge_cache_keyword(monkeypatch)

    model = tiny_model()
    scheduler = DuoScheduler(parameterization="posterior")
    calls = []
    step = scheduler.step

    @functools.wraps(step)  # the pipeline passes the keywords step's signature names
    def counted(*args, **kwargs):
        calls.append(kwargs.get("generator"))
        return step(*args, **kwargs)

    scheduler.step = counted
    pipe = DiffusionGemmaPipeline(model=model, scheduler=scheduler, processor=_Processor(64))
    pipe.set_progress_bar_config(disable=True)

    def generate(seed):
        return pipe(
            prompt="why",
            gen_length=16,
            num_inference_steps=4,
            output_type="seq",
            confidence_threshold=None,
            generator=torch.Generator().manual_seed(seed),
        )

    out = generate(0)
    assert out.sequences.shape == (1, 16) and len(calls) == 2 * 4
    assert all(isinstance(g, torch.Generator) for g in calls)
    assert bool(((out.sequences >= 0) & (out.sequences < 64)).all())
    assert torch.equal(out.sequences, generate(0).sequences)
