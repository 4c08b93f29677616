"""examples.evaluate (the CLI on a tiny run), examples.gpu_throughput --tiny, the quick demo."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from examples.evaluate import HFEvaluator, load_evaluator, sample_entropy
from examples.evaluate import main as evaluate_main
from examples.train import train
from tests.helpers import make_corpus, tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    corpus = make_corpus(root / "corpus")
    zero_shot = root / "other.txt"
    zero_shot.write_text("Of Mans First Disobedience, and the Fruit of that Forbidden Tree\n" * 8)
    out = {}
    for name in ("ar", "duo"):
        cfg = tiny_config(corpus, root / name, **{"train.objective": name, "train.steps": 3,
                                                  "data.zero_shot": str(zero_shot)})  # fmt: skip
        train(cfg)
        out[name] = root / name
    out["zero_shot"] = zero_shot
    return out


def test_sample_entropy():
    assert sample_entropy(torch.zeros(3, 10, dtype=torch.long)) == 0.0
    assert sample_entropy(torch.arange(8).repeat(2, 1)) == pytest.approx(math.log(8))


def test_evaluate_cli_reports_every_number_with_its_context(runs, capsys):
    res = evaluate_main([
        str(runs["duo"]), "--gen-ppl", "--evaluator", str(runs["ar"]), "--steps", "4,2",
        "--num-samples", "3", "--max-sequences", "8",
    ])  # fmt: skip
    val = res["validation"]
    assert val["nelbo"] > 0 and val["ppl"] == pytest.approx(math.exp(val["nelbo"]))
    assert set(val["terms"]) == {"diffusion", "prior", "reconstruction"}
    assert "prior" in val["bound"] and val["tokens"] == 8 * 32
    assert res["zero_shot"]["corpus"] == str(runs["zero_shot"])
    assert 0 <= res["zero_shot"]["unk_fraction"] < 1
    gen = res["generation"]
    assert [g["steps"] for g in gen] == [4, 2]
    for g in gen:
        assert g["num_samples"] == 3 and g["gen_ppl"] > 1 and g["entropy"] >= 0
        assert "float32" in g["precision"] and str(runs["ar"]) in g["evaluator"]
    saved = json.loads((runs["duo"] / "eval.json").read_text())
    assert saved["generation"][0]["gen_ppl"] == gen[0]["gen_ppl"]
    printed = capsys.readouterr().out
    assert "PPL <=" in printed and "entropy" in printed
    # The AR model's own numbers are exact, not bounds.
    res_ar = evaluate_main([str(runs["ar"]), "--max-sequences", "8", "--zero-shot", ""])
    assert res_ar["validation"]["bound"].startswith("exact")
    assert "PPL =" in capsys.readouterr().out


def test_evaluator_errors(runs, monkeypatch):
    with pytest.raises(ValueError, match="needs an autoregressive model"):
        load_evaluator(str(runs["duo"]))
    with pytest.raises(SystemExit):
        evaluate_main([str(runs["duo"]), "--gen-ppl", "--no-val", "--zero-shot", ""])
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        HFEvaluator(str(runs["ar"]))


def test_gpu_throughput_script_runs_tiny_on_cpu():
    from examples.gpu_throughput import main

    rows = main(["--tiny", "--objectives", "duo,duo-curriculum,ar"])
    assert [r["objective"] for r in rows] == ["duo", "duo-curriculum", "ar"]
    assert all(r["tokens_per_s"] > 0 and r["precision"] == "float32" for r in rows)
