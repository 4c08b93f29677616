"""``discdiff.adapters``: models users have, behind the denoiser seam.

On the real classes, offline: transformers' ``BertForMaskedLM`` on a tiny random ``BertConfig``
and a nanoGPT-style model (``tests/nanogpt.py``). The guide's snippets (README, "Bring your own
model") run here exactly as written, for two optimizer steps and a short sample each.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.adapters import ModelDenoiser, NoiseLevelEmbedding, as_denoiser
from discdiff.typing import Bag
from tests.nanogpt import GPT, GPTConfig

README = Path(__file__).resolve().parents[1] / "README.md"
BERT_MASK = 103  # [MASK] of the BERT tokenizers; the guide's data stays below 63


def bert(dtype: torch.dtype = torch.float32) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)  # fmt: skip
    return BertForMaskedLM(config).to(dtype)


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=32, n_embd=32))


def ids(b: int = 2, length: int = 8, k: int = 60, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (b, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The guide
# ---------------------------------------------------------------------------------------------


def _snippet(name: str) -> str:
    blocks = re.findall(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", README.read_text(),
                        re.S)  # fmt: skip
    assert len(blocks) == 1, f"README must hold exactly one {name} snippet"
    return blocks[0]


def _recipes(name: str) -> dict[str, list[str]]:
    """The snippet's recipes: its import lines, then each '# title' and the lines under it."""
    lines = [line for line in _snippet(name).splitlines() if line.strip()]
    imports = [line for line in lines if line.startswith(("from ", "import "))]
    recipes: dict[str, list[str]] = {}
    title = None
    for line in lines[len(imports):]:
        if line.startswith("# "):
            title = line[2:].split(":")[0]
            recipes[title] = list(imports)
        else:
            assert title is not None, line
            recipes[title].append(line)
    return recipes


GLUE = [(model, title) for model in ("gpt", "bert")
        for title in ("Duo", "Duo with the curriculum", "MDLM")]  # fmt: skip


@pytest.mark.parametrize(("model", "title"), GLUE)
def test_the_guides_glue_trains_and_samples_in_at_most_five_lines(model, title):
    recipe = _recipes(f"byo-{model}")[title]
    assert len(recipe) <= 5, recipe  # the glue: imports and the recipe's own lines
    namespace = {"torch": torch, model: gpt() if model == "gpt" else bert()}
    exec(compile("\n".join(recipe), "README.md", "exec"), namespace)
    denoiser, diffusion = namespace["denoiser"], namespace["diffusion"]
    before = [p.detach().clone() for p in denoiser.parameters()]
    exec(compile(_snippet("byo-loop"), "README.md", "exec"), namespace)
    moved = sum(not torch.equal(a, p) for a, p in zip(before, denoiser.parameters(), strict=True))
    assert moved > len(before) // 2  # the optimizer trained the model (and the level embedding)
    samples = namespace["samples"]
    assert samples.shape == (4, 32) and samples.dtype == torch.long
    if title == "MDLM":
        assert isinstance(diffusion, MaskedDiffusion) and diffusion.model_vocab_size == (
            namespace[model].config.vocab_size
        )
        assert not bool((samples == diffusion.mask_id).any())
    else:
        assert isinstance(denoiser.level, NoiseLevelEmbedding) and denoiser.reads_token_levels
        assert (diffusion.curriculum is not None) == (title == "Duo with the curriculum")


def test_the_glue_line_counts():
    counts = {f"{m} / {t}": len(_recipes(f"byo-{m}")[t]) for m, t in GLUE}
    assert max(counts.values()) <= 5, counts


# ---------------------------------------------------------------------------------------------
# Inputs: ids, soft inputs and bags through the input embeddings, keywords by name
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [bert, gpt], ids=["bert-inputs_embeds", "gpt-embedding-hook"])
def test_one_hot_soft_inputs_and_single_id_bags_give_the_ids_logits(make):
    model = make().eval()
    denoiser = as_denoiser(model)
    k = denoiser.vocab_size
    z = ids()
    sigma = torch.ones(2)
    expected = denoiser(z, sigma)
    torch.testing.assert_close(expected, _logits(model(input_ids=z) if make is bert else model(z)))
    one_hot = nn.functional.one_hot(z, k).float()
    torch.testing.assert_close(denoiser(one_hot, sigma), expected, rtol=1e-5, atol=1e-5)
    weights = torch.stack([torch.ones(2, 8), torch.zeros(2, 8)], -1)
    bag = Bag(torch.stack([z, (z + 1) % k], -1), weights)
    torch.testing.assert_close(denoiser(bag, sigma), expected, rtol=1e-5, atol=1e-5)
    # a mixture is the mixture of the embeddings
    soft = 0.25 * one_hot + 0.75 * nn.functional.one_hot((z + 3) % k, k).float()
    mixed = Bag(torch.stack([z, (z + 3) % k], -1), torch.tensor([0.25, 0.75]).expand(2, 8, 2))
    torch.testing.assert_close(denoiser(soft, sigma), denoiser(mixed, sigma), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def _logits(out):
    return out.logits if hasattr(out, "logits") else out[0]


def test_a_bfloat16_model_takes_the_float32_relaxed_input():
    model = bert(torch.bfloat16)
    denoiser = as_denoiser(model, level=NoiseLevelEmbedding(32))
    soft = torch.softmax(torch.randn(2, 8, 128), -1)  # float32, as the curriculum may hand it
    assert denoiser(soft, torch.ones(2)).dtype == torch.bfloat16
    curriculum = GaussianCurriculum(end_step=10, dtype=torch.float32)
    diffusion = UniformDiffusion(128, curriculum=curriculum)
    loss = diffusion.loss(denoiser, ids(4, 16), 0, reduction="mean")
    assert math.isfinite(loss.item())
    loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


class Recorder(nn.Module):
    """An HF-style forward that records what it was called with."""

    def __init__(self, k: int = 10):
        super().__init__()
        self.embed = nn.Embedding(k, 4)
        self.out = nn.Linear(4, k)
        self.seen: dict = {}

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, label=None):
        self.seen = {"input_ids": input_ids, "attention_mask": attention_mask,
                     "inputs_embeds": inputs_embeds, "label": label}  # fmt: skip
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return {"logits": self.out(h)}


def test_keywords_go_by_name_and_sigma_is_never_the_attention_mask():
    model = Recorder()
    denoiser = as_denoiser(model)
    z = ids(k=10)
    denoiser(z, torch.full((2,), 0.5))
    assert model.seen["attention_mask"] is None and torch.equal(model.seen["input_ids"], z)
    padding = torch.ones(2, 8, dtype=torch.bool)
    padding[1, 5:] = False
    denoiser(z, torch.full((2,), 0.5), padding_mask=padding, label=3)
    assert torch.equal(model.seen["attention_mask"], padding.long())
    assert model.seen["label"] == 3
    assert not denoiser.passes_sigma and not denoiser.reads_token_levels


def test_a_padding_mask_reaches_bert_as_its_attention_mask():
    model = bert().eval()
    denoiser = as_denoiser(model)
    z = ids(1, 8)
    alone = denoiser(z[:, :5], torch.ones(1))
    padding = torch.zeros(1, 8, dtype=torch.bool)
    padding[:, :5] = True
    padded = denoiser(z, torch.ones(1), padding_mask=padding)
    torch.testing.assert_close(padded[:, :5], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="neither attention_mask= nor padding_mask="):
        as_denoiser(gpt())(z, torch.ones(1), padding_mask=padding)


def test_sigma_goes_by_name_to_a_forward_that_names_it():
    seen = {}

    def model(z_t, sigma=None):
        seen["sigma"] = sigma
        return torch.zeros(*z_t.shape, 5)

    as_denoiser(model)(ids(k=5), torch.full((2,), 0.7))
    assert torch.equal(seen["sigma"], torch.full((2,), 0.7))
    as_denoiser(model, level="ignore")(ids(k=5), torch.full((2,), 0.7))
    assert seen["sigma"] is None
    model.reads_token_levels = True
    assert as_denoiser(model).reads_token_levels
    assert not as_denoiser(model, level="ignore").reads_token_levels


# ---------------------------------------------------------------------------------------------
# The noise level, outputs, the mask id, errors
# ---------------------------------------------------------------------------------------------


def test_the_noise_level_embedding_starts_at_zero_and_reads_per_token_levels():
    model = bert().eval()
    level = NoiseLevelEmbedding(32)
    denoiser = as_denoiser(model, level=level)
    z = ids()
    plain = model(input_ids=z).logits
    torch.testing.assert_close(denoiser(z, torch.full((2,), 3.0)), plain)  # zero at the start
    with torch.no_grad():
        level.embedder.mlp[-1].weight.normal_()
    a, b = denoiser(z, torch.full((2,), 0.1)), denoiser(z, torch.full((2,), 3.0))
    assert (a - b).abs().max() > 1e-3  # it reads sigma now
    per_token = torch.full((2, 8), 3.0)
    per_token[:, 0] = 0.0  # clean context at position 0
    c = denoiser(z, per_token)
    assert (c[:, 0] - b[:, 0]).abs().max() > 1e-4
    assert level(torch.ones(3)).shape == (3, 1, 32) and level(per_token).shape == (2, 8, 32)
    # a prompt is exact only for a denoiser that reads per-token levels: this one does
    prompt_mask = torch.zeros(2, 8, dtype=torch.bool)
    prompt_mask[:, :3] = True
    out = UniformDiffusion(128).sample(denoiser, 2, 8, steps=2, prompt=z, prompt_mask=prompt_mask,
                                       seed=0)  # fmt: skip
    assert torch.equal(out[:, :3], z[:, :3])
    with pytest.raises(ValueError, match="frequency_dim must be even"):
        NoiseLevelEmbedding(32, frequency_dim=3)


def test_logits_from_tensors_outputs_mappings_and_tuples_and_errors_for_the_rest():
    z = ids(k=5)
    logits = torch.randn(2, 8, 5)
    for out in (logits, {"logits": logits}, (logits, None), [None, logits]):
        assert torch.equal(as_denoiser(lambda z_t, out=out: out)(z, torch.ones(2)), logits)
    with pytest.raises(TypeError, match=r"BertModel returned a BaseModelOutput.*without logits"):
        as_denoiser(BertModel(bert().config))(ids(), torch.ones(2))
    with pytest.raises(TypeError, match="without logits"):
        as_denoiser(lambda z_t: (None, 1.0))(z, torch.ones(2))
    with pytest.raises(ValueError, match="returned 5 logits per token, but vocab_size=6"):
        as_denoiser(lambda z_t: logits, vocab_size=6)(z, torch.ones(2))
    with pytest.raises(ValueError, match=r"expected \(B, L, K\)"):
        as_denoiser(lambda z_t: logits[0])(z, torch.ones(2))


def test_the_mask_logit_is_minus_infinity_and_the_mask_id_is_checked():
    model = bert().eval()
    denoiser = as_denoiser(model, mask_id=BERT_MASK)
    out = denoiser(ids(), torch.zeros(2))
    assert bool((out[..., BERT_MASK] == -math.inf).all())
    assert torch.equal(out[..., :BERT_MASK], model(input_ids=ids()).logits[..., :BERT_MASK])
    with pytest.raises(ValueError, match=r"mask_id=128 is not an id of the model's vocabulary"):
        as_denoiser(model, mask_id=128)
    with pytest.raises(ValueError, match="mask_id needs vocab_size"):
        as_denoiser(lambda z_t: z_t, mask_id=3)


def test_bad_settings_are_named():
    model = bert()
    with pytest.raises(ValueError, match="parameterization must be 'x_hat'"):
        as_denoiser(model, parameterization="logits")
    with pytest.raises(ValueError, match="input must be 'ids', 'embeds' or 'auto'"):
        as_denoiser(model, input="tokens")
    with pytest.raises(ValueError, match="level must be None"):
        as_denoiser(model, level=nn.Linear(1, 1))
    with pytest.raises(TypeError, match="already a discdiff denoiser"):
        as_denoiser(as_denoiser(model))
    with pytest.raises(ValueError, match="input='ids' and got the curriculum's relaxed input"):
        as_denoiser(model, input="ids")(torch.rand(2, 8, 128), torch.ones(2))
    # nanoGPT's wte and wpe both have K rows here: which one is the input embedding?
    twin = GPT(GPTConfig(vocab_size=32, block_size=32))
    with pytest.raises(ValueError, match="pass embedding="):
        as_denoiser(twin, level=NoiseLevelEmbedding(32))
    named = as_denoiser(twin, level=NoiseLevelEmbedding(32), embedding="transformer.wte")
    assert named(torch.rand(2, 8, 32), torch.ones(2)).shape == (2, 8, 32)
    with pytest.raises(ValueError, match="is not an nn.Embedding"):
        as_denoiser(twin, embedding="transformer.h")


def test_embed_scale_is_applied_to_soft_inputs():
    class Scaled(nn.Embedding):  # as Gemma's scaled word embedding
        embed_scale = 4.0

        def forward(self, input_ids):
            return super().forward(input_ids) * self.embed_scale

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = Scaled(6, 4)
            self.out = nn.Linear(4, 6)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids=None, inputs_embeds=None):
            return self.out(self.embed(input_ids) if inputs_embeds is None else inputs_embeds)

    denoiser = as_denoiser(Model())
    z = ids(k=6)
    torch.testing.assert_close(denoiser(nn.functional.one_hot(z, 6).float(), torch.ones(2)),
                               denoiser(z, torch.ones(2)))  # fmt: skip


def test_the_wrapper_copies_and_saves_as_a_module():
    model = gpt()
    denoiser = as_denoiser(model, level=NoiseLevelEmbedding(32))
    assert isinstance(denoiser, ModelDenoiser) and denoiser.parameterization == "x_hat"
    assert not any(key.startswith("_embedding") for key in denoiser.state_dict())
    twin = copy.deepcopy(denoiser)  # DCD's teacher is a deep copy
    assert twin._embedding is twin.model.transformer.wte
    soft = torch.softmax(torch.randn(2, 8, 64), -1)
    torch.testing.assert_close(twin(soft, torch.ones(2)), denoiser(soft, torch.ones(2)))
    posterior = as_denoiser(model, parameterization="posterior")
    assert posterior.parameterization == "posterior"
