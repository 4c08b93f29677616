"""examples.policies end to end on tiny trained runs: the rows, their NFE, the scores against
an independent recomputation, the markdown and JSON files, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from examples.policies import main as policies_main
from examples.train import train
from tests.helpers import make_corpus, tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    corpus = make_corpus(root / "corpus")
    for name in ("ar", "duo", "mdlm"):
        train(tiny_config(corpus, root / "demo" / name, **{"train.objective": name,
                                                           "train.steps": 3}))  # fmt: skip
    return root / "demo"


def test_the_table_has_every_decoder_at_every_step_count(runs, tmp_path, capsys):
    out = tmp_path / "table.json"
    rows = policies_main([str(runs), "--num-samples", "3", "--batch-size", "2", "--steps", "2,5",
                          "--out", str(out)])  # fmt: skip
    names = [r["sampler"] for r in rows]
    assert names == [
        "Duo ancestral (exact), tail none", "Duo ancestral (exact), greedy tail",
        "Duo entropy bound 0.1", "MDLM ancestral (exact), tail none",
        "LLaDA low-confidence, T=1", "Fast-dLLM confidence tau=0.9, T=1",
    ] * 2  # fmt: skip
    assert [r["steps"] for r in rows] == [2] * 6 + [5] * 6
    length = 32  # tiny_config's data.seq_len
    for r in rows:
        steps = r["steps"]
        if r["sampler"].startswith("Duo"):  # every call counts
            assert r["nfe"] == steps + (r["tail"] == "greedy")
        else:  # a masked row stops costing calls once done, or when a step changed nothing
            assert 1 <= r["nfe"] <= steps
        assert r["tokens_per_forward"] == pytest.approx(length / r["nfe"], rel=1e-12)
        assert r["num_samples"] == 3 and r["gen_ppl"] > 1 and r["entropy"] >= 0
        assert r["scored_tokens"] == 3 * (length - 1) and "AR run" in r["evaluator"]
    assert json.loads(out.read_text()) == rows
    table = out.with_suffix(".md").read_text()
    assert table.startswith("| sampler | steps | NFE per sample | tokens per forward | gen. PPL")
    assert all(f"| {n} |" in table for n in names)
    assert table in capsys.readouterr().out


def test_gen_ppl_is_the_ar_runs_perplexity_of_the_samples(runs, tmp_path):
    """One row recomputed here: the same decoder and seed, scored by the AR model in float64."""
    from discdiff.samplers import Decoding, UniformStep, decode
    from examples.backbone import load_trained

    rows = policies_main([str(runs), "--num-samples", "2", "--steps", "2", "--seed", "4",
                          "--out", str(tmp_path / "p.json")])  # fmt: skip
    duo, ar = load_trained(runs / "duo"), load_trained(runs / "ar")
    d = duo.objective.diffusion
    x = decode(Decoding("a", UniformStep(), 2), duo.model, 2, 32, schedule=d.schedule,
               vocab_size=d.vocab_size, generator=torch.Generator().manual_seed(4)).samples
    with torch.no_grad():
        logp = torch.log_softmax(ar.model(x[:, :-1]).double(), -1)
    nll = -logp.gather(-1, x[:, 1:].unsqueeze(-1)).sum()
    assert rows[0]["gen_ppl"] == pytest.approx(math.exp(float(nll) / x[:, 1:].numel()), rel=1e-9)


def test_a_directory_without_the_runs_is_refused_naming_it(runs, tmp_path):
    with pytest.raises(SystemExit, match="RUNS_DIR .* has no run"):
        policies_main([str(tmp_path), "--num-samples", "1", "--steps", "1"])
    with pytest.raises(SystemExit):  # argparse: a step count < 1
        policies_main([str(runs), "--steps", "0"])
