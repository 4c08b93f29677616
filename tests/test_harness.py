"""discdiff.harness: the conditional NELBO, the scorers, and lm-evaluation-harness end to end.

The laws: without a context the conditional bound is the library's NELBO; the context is seen
clean and never scored; with the exact conditional denoiser the Monte Carlo estimate recovers
-log p(y | c) within its standard error; the AR scorer is the exact chain rule. Then
``python -m examples.evaluate RUN --lm-eval ...`` on a tiny run and on a converted reference
checkpoint, with local tasks (multiple choice, generation, rolling perplexity), offline.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from discdiff.diffusion import MaskedDiffusion, UniformDiffusion
from discdiff.harness import (
    AutoregressiveScorer,
    DiffusionScorer,
    DiscDiffLM,
    Estimate,
    conditional_nelbo,
    stratified_stderr,
)
from discdiff.models import DiT

pytest.importorskip("lm_eval")

K = 7


def tiny_dit(vocab_size: int, *, causal: bool = False, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT.from_preset("tiny", vocab_size=vocab_size, hidden_size=32, n_heads=2,
                            n_blocks=1, cond_dim=16, causal=causal, dropout=0.0)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def request(*args):
    return SimpleNamespace(args=args)


class CharTok:
    """ids 0..25 = a..z, 26 = space, 27 = BOS/EOS."""

    bos_id = eos_id = 27
    vocab_size = 28

    def encode(self, text):
        return [26 if c == " " else ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(" " if i == 26 else chr(97 + i) for i in ids if i < 27)


# --- the bound -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "masked"])
def test_without_context_it_is_the_library_nelbo(kind):
    diffusion = UniformDiffusion(K) if kind == "uniform" else MaskedDiffusion(K)
    model = tiny_dit(K if kind == "uniform" else K + 1)
    x = torch.randint(0, K, (4, 6), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    ours = conditional_nelbo(diffusion, model, x, torch.zeros_like(x, dtype=torch.bool), t,
                             generator=torch.Generator().manual_seed(3))  # fmt: skip
    ref = diffusion.nelbo(model, x, t=t, generator=torch.Generator().manual_seed(3))
    for name in ("diffusion", "prior", "reconstruction"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))


def test_context_is_seen_clean_and_never_scored():
    seen = []

    def denoiser(z, sigma):
        seen.append(z.clone())
        levels.append(sigma.clone())
        return torch.zeros(*z.shape, K)

    levels = []
    denoiser.reads_token_levels = True  # a uniform-state context is told by sigma = 0 there

    x = torch.randint(0, K, (8, 6), generator=torch.Generator().manual_seed(1))
    clean = torch.zeros_like(x, dtype=torch.bool)
    clean[:, :3] = True
    bound = conditional_nelbo(UniformDiffusion(K), denoiser, x, clean, torch.full((8,), 0.9))
    assert all(torch.equal(z[:, :3], x[:, :3]) for z in seen)
    assert (seen[0][:, 3:] != x[:, 3:]).any()  # the continuation was noised
    assert all((sigma[:, :3] == 0).all() and (sigma[:, 3:] > 0).all() for sigma in levels)
    for term in (bound.diffusion, bound.prior, bound.reconstruction):
        assert (term[:, :3] == 0).all() and (term[:, 3:] != 0).any()


def test_the_former_module_name_re_exports_the_adapter():
    import discdiff.harness as former
    import discdiff.integrations.lm_eval as adapter

    for name in former.__all__:
        assert getattr(former, name) is getattr(adapter, name)


def test_the_bound_is_the_librarys_conditional_nelbo():
    """The adapter adds no maths of its own: with a context, ``diffusion.nelbo(...,
    clean_mask=)`` on the same draws; a uniform-state denoiser must read per-token levels."""
    x = torch.randint(0, K, (4, 6), generator=torch.Generator().manual_seed(2))
    clean = torch.zeros_like(x, dtype=torch.bool)
    clean[:, :2] = True
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    for diffusion in (UniformDiffusion(K), MaskedDiffusion(K)):
        model = tiny_dit(getattr(diffusion, "model_vocab_size", K))
        ours = conditional_nelbo(diffusion, model, x, clean, t,
                                 generator=torch.Generator().manual_seed(4))  # fmt: skip
        ref = diffusion.nelbo(model, x, t=t, clean_mask=clean,
                              generator=torch.Generator().manual_seed(4))  # fmt: skip
        assert torch.equal(ours.total, ref.total) and (ours.total[:, :2] == 0).all()
    blind = lambda z, sigma: torch.zeros(*z.shape, K)  # noqa: E731
    with pytest.raises(ValueError, match="reads per-token noise levels"):
        conditional_nelbo(UniformDiffusion(K), blind, x, clean, t)
    with pytest.raises(ValueError, match="reads per-token noise levels"):
        DiffusionScorer(UniformDiffusion(K), blind).score(torch.tensor([1]), torch.tensor([2]))


def test_stratified_stderr():
    assert stratified_stderr(torch.ones(8)) == 0.0
    # pairs (1, 3) and (2, 2): sqrt(4 + 0) / 4
    assert stratified_stderr(torch.tensor([1.0, 3.0, 2.0, 2.0])) == pytest.approx(0.5)
    assert math.isnan(stratified_stderr(torch.ones(1)))


@pytest.mark.parametrize("kind", ["uniform", "masked"])
def test_exact_denoiser_recovers_the_conditional_law(kind):
    """p(y | c) a fixed table; the denoiser that returns it (the optimal one: the only other
    position is the clean context) makes the bound tight up to the prior and reconstruction."""
    g = torch.Generator().manual_seed(0)
    table = torch.softmax(2 * torch.randn(K, K, generator=g), dim=-1)  # p(y | c) rows
    diffusion = UniformDiffusion(K) if kind == "uniform" else MaskedDiffusion(K)

    def denoiser(z, sigma):
        logits = table[z[:, 0]].log()[:, None, :].expand(-1, z.shape[1], -1)
        if kind == "masked":
            logits = torch.cat([logits, torch.full((*logits.shape[:2], 1), -1e4)], dim=-1)
        return logits

    denoiser.reads_token_levels = True  # it ignores sigma: position 0 is always the context

    scorer = DiffusionScorer(diffusion, denoiser, num_samples=16384, batch_size=4096)
    for c, y in ((0, 3), (2, 2), (5, 1)):
        est = scorer.score(torch.tensor([c]), torch.tensor([y]))
        exact = -math.log(table[c, y])
        assert 0 < est.stderr < 0.15
        assert abs(est.nll - exact) < 4 * est.stderr + 0.02, (c, y, est, exact)


# --- the lm_eval model ---------------------------------------------------------------------------


def test_autoregressive_scorer_is_the_chain_rule():
    model = tiny_dit(CharTok.vocab_size, causal=True)
    lm = DiscDiffLM(AutoregressiveScorer(model), CharTok(), max_length=64)
    (ll, greedy), = lm.loglikelihood([request("to be", " or not")])  # fmt: skip
    ids = torch.tensor([27, *CharTok().encode("to be or not")])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None, :-1])[0].double(), dim=-1)
    cont = ids[6:]  # after BOS + "to be"; logits row i predicts token i + 1
    assert ll == pytest.approx(float(logp[5:].gather(-1, cont[:, None]).sum()), abs=1e-9)
    assert lm.estimates[0].stderr == 0 and isinstance(greedy, bool)
    whole = float(logp.gather(-1, ids[1:, None]).sum())
    (rolled,) = lm.loglikelihood_rolling([request("to be or not")])
    assert rolled == pytest.approx(whole, abs=1e-9)
    short = DiscDiffLM(AutoregressiveScorer(model), CharTok(), max_length=5)
    assert math.isfinite(short.loglikelihood_rolling([request("to be or not")])[0])


def test_rolling_windows_score_every_token_once():
    scored = []

    class Recorder:
        vocab_size = 28

        def score(self, context, continuation):
            scored.extend(continuation.tolist())
            assert context.numel() + continuation.numel() <= 6
            return Estimate(1.0, 0.1, False, continuation.numel())

    lm = DiscDiffLM(Recorder(), CharTok(), max_length=6)
    text = "to be or not to be"
    (total,) = lm.loglikelihood_rolling([request(text)])
    assert scored == CharTok().encode(text) and total < 0


def test_generate_until_stops_and_prompts_hold():
    class Fixed:
        vocab_size = 28

        def generate(self, context, length):
            return torch.tensor(CharTok().encode("ab cd ef")[:length])

    lm = DiscDiffLM(Fixed(), CharTok(), max_length=32)
    out = lm.generate_until([request("xy", {"until": [" c"], "max_gen_toks": 8}),
                             request("xy", {"until": "zz", "max_gen_toks": 2})])  # fmt: skip
    assert out == ["ab", "ab"]
    for diffusion in (UniformDiffusion(28), MaskedDiffusion(28)):
        model = tiny_dit(28 if isinstance(diffusion, UniformDiffusion) else 29)
        scorer = DiffusionScorer(diffusion, model, steps=3)
        new = scorer.generate(torch.tensor([27, 1, 2, 3]), 5)
        assert new.shape == (5,) and (new < 28).all()
        text = DiscDiffLM(scorer, CharTok()).generate_until([request("abc", {"max_gen_toks": 5})])
        assert isinstance(text[0], str)


def test_diffusion_scorer_matches_the_conditional_nelbo_mean():
    model = tiny_dit(K)
    scorer = DiffusionScorer(UniformDiffusion(K), model, num_samples=6, batch_size=4, seed=5)
    est = scorer.score(torch.tensor([1, 2]), torch.tensor([3, 4, 5]))
    again = scorer.score(torch.tensor([1, 2]), torch.tensor([3, 4, 5]))
    assert est == again  # the same grid and noise for every request
    assert est.tokens == 3 and est.nll > 0 and est.stderr > 0


# --- lm-evaluation-harness through examples.evaluate ---------------------------------------------


TASKS = {
    "tiny_mc": """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    "tiny_gen": """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    "tiny_ppl": """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
""",
}

DOCS = [
    {"question": "to be or not to", "choices": [" be", " see", " go"], "answer": 0},
    {"question": "that is the", "choices": [" question", " answer"], "answer": 0},
    {"question": "whether tis nobler in the", "choices": [" mind", " heart", " soul"],
     "answer": 0},
    {"question": "to suffer the", "choices": [" slings", " arrows"], "answer": 1},
]  # fmt: skip


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    data = root / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, text in TASKS.items():
        (root / f"{name}.yaml").write_text(text.format(data=data))
    return root


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def test_lm_eval_cli_on_a_tiny_run(tmp_path, task_dir, offline, capsys):
    from examples.evaluate import main as evaluate_main
    from examples.train import train
    from tests.helpers import make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    run = tmp_path / "duo"
    train(tiny_config(corpus, run, **{"train.steps": 2, "train.objective": "duo"}))
    res = evaluate_main([
        str(run), "--no-val", "--zero-shot", "", "--lm-eval", "tiny_mc,tiny_gen,tiny_ppl",
        "--lm-eval-include", str(task_dir), "--lm-eval-samples", "4", "--lm-eval-steps", "2",
        "--batch-size", "4",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    print(printed)
    lines = [line for line in printed.splitlines() if line.startswith("lm-eval ")]
    assert any(line.startswith("lm-eval tiny_mc: acc ") for line in lines)
    assert any("tiny_gen: exact_match" in line for line in lines)
    assert any("tiny_ppl: word_perplexity" in line for line in lines)
    acc = res["lm_eval"]["results"]["tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    saved = json.loads((run / "lm_eval.json").read_text())
    assert saved["results"]["tiny_mc"]["acc,none"] == acc


def test_lm_eval_cli_on_a_converted_reference_checkpoint(tmp_path, task_dir, offline, capsys,
                                                         monkeypatch):  # fmt: skip
    """A reference AR checkpoint (its vocabulary: the tokenizer's 29 ids plus the unused mask
    id) converted, then evaluated with a GPT-2-style BPE tokenizer from local files."""
    from discdiff.convert import main as convert_main
    from examples.evaluate import main as evaluate_main
    from tests.reference_dit import DIT, randomize_
    from tests.test_convert import save_lightning

    letters = [chr(97 + i) for i in range(26)]
    vocab = {c: i for i, c in enumerate(letters)} | {"Ġ": 26, "Ċ": 27, "<|endoftext|>": 28}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    config = {"model": {"hidden_size": 32, "n_heads": 2, "n_blocks": 1, "cond_dim": 16,
                        "dropout": 0.0, "length": 32},
              "algo": {"name": "ar", "causal_attention": True, "parameterization": "ar"}}
    ref = randomize_(DIT(config, 30), torch.Generator().manual_seed(0)).eval()
    save_lightning(tmp_path / "ar.ckpt", ref, ref, config, monkeypatch)
    convert_main([str(tmp_path / "ar.ckpt"), str(tmp_path / "ar")])
    corpus = tmp_path / "other.txt"
    corpus.write_text("to be or not to be that is the question\n" * 20)
    res = evaluate_main([
        str(tmp_path / "ar"), "--tokenizer-files", str(tmp_path / "vocab.json"),
        str(tmp_path / "merges.txt"), "--zero-shot", str(corpus), "--max-sequences", "4",
        "--lm-eval", "tiny_mc", "--lm-eval-include", str(task_dir),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    print(printed)
    assert res["zero_shot"]["bound"].startswith("exact") and "validation" not in res
    assert "lm-eval tiny_mc: acc " in printed
