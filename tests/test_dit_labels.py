"""The DiT's class labels (``DiTConfig.num_classes``): the label embedding, its null label,
guided sampling through ``cond={"label": y}``, persistence, and old models without labels."""

from __future__ import annotations

import json

import pytest
import torch

from discdiff import samplers
from discdiff.models import DiT, DiTConfig
from discdiff.schedules import LogLinearSchedule

K, B, L = 11, 3, 6


def _dit(**overrides) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=16, n_blocks=1, n_heads=2,
                            cond_dim=8, dropout=0.0, **overrides)  # fmt: skip
    with torch.no_grad():  # leave adaLN-zero's start, where no conditioning reaches the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_labels_condition_the_logits_and_none_is_the_null_label():
    model = _dit(num_classes=3)
    assert model.label_embed.weight.shape == (4, 8)  # three labels and the null label
    z, sigma = torch.randint(0, K, (B, L)), torch.rand(B)
    by_label = [model(z, sigma, label=torch.full((B,), y)) for y in range(4)]
    assert not torch.equal(by_label[0], by_label[1])
    assert torch.equal(model(z, sigma), by_label[3])  # no label: the null label
    mixed = model(z, sigma, label=torch.tensor([0, 1, 3]))
    for row, y in enumerate((0, 1, 3)):
        torch.testing.assert_close(mixed[row], by_label[y][row])
    with pytest.raises(ValueError, match="label"):
        model(z, sigma, label=torch.tensor([0, 1, 4]))  # past the null label
    with pytest.raises((ValueError, TypeError)):
        model(z, sigma, label=torch.tensor([0, 1]))  # not (B,)


def test_models_without_labels_refuse_them():
    z, sigma = torch.randint(0, K, (B, L)), torch.rand(B)
    with pytest.raises(ValueError, match="num_classes"):
        _dit()(z, sigma, label=torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        DiTConfig(vocab_size=K, hidden_size=16, n_blocks=1, n_heads=2, causal=True, num_classes=2)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes"):
            DiTConfig(vocab_size=K, hidden_size=16, n_blocks=1, n_heads=2, num_classes=bad)


def test_unlabelled_dit_is_unchanged():
    plain = _dit()
    assert "label_embed.weight" not in plain.state_dict() and plain.label_embed is None
    assert plain.config.to_dict()["num_classes"] is None


def test_guided_sampling_passes_the_label_to_the_dit():
    model = _dit(num_classes=2)
    with torch.no_grad():
        model.label_embed.weight.mul_(200)  # labels that change the samples
    kw = {"schedule": LogLinearSchedule(), "vocab_size": K}
    y0, y1, null = (torch.full((B,), y) for y in (0, 1, 2))

    def draw(gamma, cond, uncond):
        # tail="none": the last step samples, so a sharper guided law shows in the draws (an
        # argmax tail of saturated logits would hide it)
        return samplers.sample_uniform(model, B, L, 4, generator=torch.Generator().manual_seed(0),
                                       tail="none", cond={"label": cond}, guidance_scale=gamma,
                                       uncond={"label": uncond}, **kw)  # fmt: skip

    assert not torch.equal(draw(1.0, y0, null), draw(1.0, y1, null))  # the label is used
    assert torch.equal(draw(1.0, y0, null), draw(1.0, y0, y1))  # gamma = 1: conditional only
    assert torch.equal(draw(0.0, y0, null), draw(1.0, null, y1))  # gamma = 0: the null label
    assert not torch.equal(draw(2.0, y0, null), draw(1.0, y0, null))


def test_persistence_round_trips_num_classes_and_loads_old_models(tmp_path):
    model = _dit(num_classes=3)
    model.save_pretrained(tmp_path / "labelled")
    assert json.loads((tmp_path / "labelled" / "config.json").read_text())["num_classes"] == 3
    again = DiT.from_pretrained(tmp_path / "labelled")
    assert again.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    old = _dit()
    old.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["num_classes"]  # a model saved before labels existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = DiT.from_pretrained(tmp_path / "old")
    assert loaded.config.num_classes is None and loaded.label_embed is None


def test_parameter_counts_include_the_label_embedding():
    labelled, plain = _dit(num_classes=3), _dit()
    extra = labelled.label_embed.weight.numel()
    assert labelled.param_count().conditioning == plain.param_count().conditioning + extra
    assert labelled.param_count().total == plain.param_count().total + extra
