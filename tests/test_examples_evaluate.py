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


def test_evaluate_reproduces_the_training_logs_validation_with_its_error_bar(runs, capsys):
    """By default the loop's seed, batch and sequence count: the logged number to the last
    digit; the standard error is the delta-method one, recomputed here from the per-sequence
    bounds in float64."""
    from examples.backbone import load_trained
    from examples.data import masked_validation_batches, prepare_data
    from examples.metrics import read_csv

    logged = read_csv(runs["duo"] / "val_log.csv")[-1]
    res = evaluate_main([str(runs["duo"]), "--zero-shot", ""])["validation"]
    assert res["nelbo"] == float(logged["nelbo"]) and res["seed"] == int(logged["seed"])
    assert res["nelbo_se"] == float(logged["nelbo_se"])
    assert f"± {res['nelbo_se']:.4f}" in capsys.readouterr().out
    other = evaluate_main([str(runs["duo"]), "--zero-shot", "", "--seed", "0"])["validation"]
    assert other["nelbo"] != res["nelbo"] and other["seed"] == 0

    run = load_trained(runs["duo"])
    cfg = run.config
    data = prepare_data(cfg.data.source, tokenizer=run.tokenizer, seq_len=cfg.data.seq_len,
                        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    gen = torch.Generator().manual_seed(res["seed"])
    b = []
    with torch.no_grad():
        for batch in masked_validation_batches(data.val, 4, cfg.train.eval_sequences):
            terms = run.objective.bound(run.model, batch.x_0, generator=gen).terms
            b.append(sum(v.double() for v in terms.values()).sum(1))
    b = torch.cat(b)
    n = cfg.data.seq_len  # packed rows: every token counts
    m = b.numel()
    r = float(b.sum() / (m * n))
    se = math.sqrt(float(((b - r * n) ** 2).sum()) / (m * (m - 1))) / n
    assert res["sequences"] == m == cfg.train.eval_sequences
    assert res["nelbo"] == pytest.approx(r, rel=1e-12)
    assert res["nelbo_se"] == pytest.approx(se, rel=1e-9)


def test_sample_command_prints_decoded_text_with_a_prompt(runs, capsys):
    from examples.sample import main as sample_main

    texts = sample_main([str(runs["duo"]), "--steps", "4", "--num-samples", "3", "--seed", "5",
                         "--prompt", "abc", "--kappa", "0.5", "--top-p", "0.9"])  # fmt: skip
    printed = capsys.readouterr().out
    assert len(texts) == 3 and all(t.startswith("abc") for t in texts)
    assert all(t in printed for t in texts) and "4 steps, tail greedy, kappa 0.5" in printed
    again = sample_main([str(runs["duo"]), "--steps", "4", "--num-samples", "3", "--seed", "5",
                         "--prompt", "abc", "--kappa", "0.5", "--top-p", "0.9"])  # fmt: skip
    assert again == texts  # seeded
    ar = sample_main([str(runs["ar"]), "--num-samples", "2", "--prompt", "ab"])
    assert all(t.startswith("ab") for t in ar)


@pytest.mark.parametrize("argv, message", [
    (["--kappa", "0.5"], "--kappa is the Psi sampler"),  # an AR run
    (["--prompt", "x" * 40], "give a shorter prompt"),
])  # fmt: skip
def test_sample_command_refusals_are_messages_not_tracebacks(runs, capsys, argv, message):
    from examples.sample import main as sample_main

    with pytest.raises(SystemExit) as exit_:
        sample_main([str(runs["ar"]), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_command_turns_a_library_refusal_into_exit_status_2(runs, capsys, monkeypatch):
    """A library that refuses prompts (e.g. for a denoiser without per-token noise levels)
    raises a ValueError: the command prints its message alone."""
    from examples import objectives
    from examples.sample import main as sample_main

    def refuse(self, *args, **kwargs):
        raise ValueError("prompt: this denoiser does not read per-token noise levels")

    monkeypatch.setattr(objectives.DuoObjective, "sample", refuse)
    with pytest.raises(SystemExit) as exit_:
        sample_main([str(runs["duo"]), "--prompt", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "per-token noise levels" in err and "Traceback" not in err
