"""The example trains any backbone: ``--model.factory package.module:function``.

A GRU (tests/backbones.py) gets the loop's EMA, checkpoints, exact resume and evaluation, with
no change to the loop, and is rebuilt from its checkpoint by ``load_trained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.train import build_model, load_trained, train
from tests.backbones import TinyGRU
from tests.helpers import make_corpus, tiny_config

FACTORY = "tests.backbones:tiny_gru"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(corpus: Path, out: Path, **overrides):
    return tiny_config(corpus, out, **{
        "model.factory": FACTORY, "model.hidden": 16, "model.options": '{"layers": 2}',
        "model.dropout": None, **overrides,
    })  # fmt: skip


def test_build_model_calls_the_factory_with_the_config():
    cfg = _cfg(Path("."), Path("out"))
    model = build_model(cfg.model, 11, causal=True, seq_len=32)
    assert isinstance(model, TinyGRU) and model.causal
    assert model.gru.num_layers == 2 and model.gru.hidden_size == 16
    assert model.out.out_features == 11


@pytest.mark.parametrize("path, message", [
    ("tests.backbones", "package.module:function"),
    ("tests.no_such_module:f", "cannot import"),
    ("tests.backbones:nothing_here", "has no"),
    ("tests.backbones:__doc__", "not callable"),
])  # fmt: skip
def test_a_bad_factory_is_named(path, message):
    cfg = _cfg(Path("."), Path("out"), **{"model.factory": path})
    with pytest.raises(ValueError, match=message):
        build_model(cfg.model, 5, seq_len=8)


def test_a_factory_that_returns_no_module_is_refused():
    cfg = _cfg(Path("."), Path("out"), **{"model.factory": "tests.backbones:not_a_module"})
    with pytest.raises(TypeError, match="not an nn.Module"):
        build_model(cfg.model, 5, seq_len=8)


def test_a_gru_trains_checkpoints_resumes_and_evaluates(corpus_dir, tmp_path):
    straight = train(_cfg(corpus_dir, tmp_path / "straight"))
    first = train(_cfg(corpus_dir, tmp_path / "split", **{"train.stop_after": 3}))
    assert first.stopped_early and first.step == 3
    second = train(_cfg(corpus_dir, tmp_path / "split", **{"train.resume": True}))
    assert second.step == 6
    assert first.losses + second.losses == straight.losses  # bit-for-bit resume
    assert all(torch.isfinite(torch.tensor(straight.losses)))

    run = load_trained(tmp_path / "split")  # rebuilt by the same factory, EMA weights
    assert isinstance(run.model, TinyGRU) and run.step == 6
    meta = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["meta"]
    assert meta["model"]["factory"] == FACTORY and meta["model"]["kwargs"]["layers"] == 2
    from examples.evaluate import validation_perplexity

    seed = run.config.train.seed + 12345  # the seed of the loop's own validation
    res = validation_perplexity(run, max_sequences=8, batch_size=4, seed=seed)
    assert res["tokens"] > 0 and res["ppl"] > 1.0
    assert res["nelbo"] == pytest.approx(second.val[-1]["nelbo"], rel=1e-5)
    saved = json.loads((tmp_path / "split" / "diffusion.json").read_text())
    assert saved["diffusion"]["type"] == "UniformDiffusion"


def test_a_causal_gru_trains_as_the_ar_baseline(corpus_dir, tmp_path):
    result = train(_cfg(corpus_dir, tmp_path / "ar", **{"train.objective": "ar",
                                                       "train.steps": 3}))  # fmt: skip
    assert result.step == 3 and isinstance(result.model, TinyGRU) and result.model.causal
    run = load_trained(tmp_path / "ar")
    assert run.model.causal and run.objective.name == "ar"


SEEN: list[dict] = []


class PositionalGRU(TinyGRU):
    """A GRU with learned position embeddings: it needs the sequence length to be built."""

    def __init__(self, vocab_size: int, causal: bool, *, seq_len: int, hidden: int) -> None:
        super().__init__(vocab_size, causal, hidden=hidden)
        self.position = torch.nn.Embedding(seq_len, hidden)

    def forward(self, z_t, sigma=None, **cond):
        soft = z_t.is_floating_point()  # the curriculum's relaxed latents (B, L, K)
        h = z_t.to(self.embed.weight.dtype) @ self.embed.weight if soft else self.embed(z_t)
        h = h + self.position(torch.arange(z_t.shape[1]))
        if sigma is not None and not self.causal:
            h = h + self.sigma_map(sigma.clamp(max=50.0)[:, None].to(h.dtype))[:, None, :]
        return self.out(self.gru(h)[0])


def positional_gru(vocab_size, causal, *, seq_len, mask_id, num_classes, **config):
    """Takes exactly what any backbone needs, and the sizes; refuses DiT-only keys."""
    assert not {"preset", "cond_dim"} & set(config), config
    SEEN.append({"vocab_size": vocab_size, "seq_len": seq_len, "mask_id": mask_id,
                 "num_classes": num_classes, **config})  # fmt: skip
    return PositionalGRU(vocab_size, causal, seq_len=seq_len, hidden=config["hidden"])


@pytest.mark.parametrize("objective, mask_id", [("duo", None), ("mdlm", "K")])
def test_a_factory_gets_what_any_backbone_needs(corpus_dir, tmp_path, objective, mask_id):
    SEEN.clear()
    cfg = _cfg(corpus_dir, tmp_path / objective, **{
        "model.factory": "tests.test_examples_backbone:positional_gru", "model.options": "",
        "data.seq_len": 48, "train.objective": objective, "train.steps": 2,
    })  # fmt: skip
    result = train(cfg)
    assert result.step == 2 and isinstance(result.model, PositionalGRU)
    K = load_trained(tmp_path / objective).tokenizer.vocab_size
    expected = {"vocab_size": K + (objective == "mdlm"), "seq_len": 48,
                "mask_id": K if mask_id == "K" else None, "num_classes": None, "hidden": 16,
                "blocks": 2, "heads": 2}  # fmt: skip
    assert SEEN[0] == expected  # and load_trained rebuilt it with the same call:
    assert SEEN[-1] == expected and len(SEEN) == 2
