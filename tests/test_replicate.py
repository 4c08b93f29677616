"""examples.replicate at toy size: every section of the report, its plots and its tables."""

from __future__ import annotations

import pytest
import torch

from examples.replicate import main, sample_both_tails, steps_to_reach
from tests.helpers import make_corpus


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicate")
    corpus = make_corpus(tmp / "corpus")
    zero_shot = tmp / "zero_shot.txt"
    zero_shot.write_text("A different text that none of the models trained on.\n" * 20)
    out, docs = tmp / "runs", tmp / "docs"
    argv = ["--scale", "toy", "--data", str(corpus), "--zero-shot", str(zero_shot),
            "--out", str(out), "--docs", str(docs), "--workers", "1"]  # fmt: skip
    summary = main(argv)
    return summary, out, docs


def test_report_has_every_section(replication, capsys):
    summary, out, docs = replication
    report = (docs / "replication.md").read_text()
    for heading in ("## (a) Duo with and without the curriculum", "## (b) Perplexity",
                    "## (c) Few-step generation", "## (d) The paper beside this run",
                    "## Configuration"):  # fmt: skip
        assert heading in report
    for name in summary["plots"]:
        assert (docs / name).is_file() and (docs / name).stat().st_size > 1000
        assert f"]({name})" in report
    assert "minutes** of wall time" in report and "cores" in report
    assert (out / "results.json").is_file()
    # every run trained, every model evaluated, both tails at every step count
    methods = [r["method"] for r in summary["perplexity"]]
    assert methods == ["AR", "MDLM", "Duo", "Duo (no curriculum)", "Duo+DCD"]
    assert all(r["val_ppl"] > 1 and r["zero_shot_ppl"] > 1 for r in summary["perplexity"])
    gen = {(r["method"], r["steps"], r["tail"]) for r in summary["generation"]}
    assert gen == {(m, s, t) for m in ("Duo", "Duo+DCD", "MDLM") for s in (8, 2)
                   for t in ("greedy", "ancestral")}  # fmt: skip
    assert len(summary["curriculum"]["gradient_variance"]) == 2
    assert {r["claim"].split(":")[0] for r in summary["verdicts"]} >= {
        "curriculum", "validation PPL ordering"}


def test_tables_are_in_the_report_as_printed(replication):
    summary, _, docs = replication
    report = (docs / "replication.md").read_text()
    # the printed tables are the report's tables: spot-check a row of each
    ar = summary["perplexity"][0]
    assert f"| AR | {ar['val_ppl']:.3f} | exact |" in report
    row = summary["generation"][0]
    assert f"| {row['method']} | {row['steps']} | {row['tail']} | {row['gen_ppl']:.3f} |" in report


def test_greedy_variant_equals_library_greedy_tail(replication):
    from examples.train import load_trained

    _, out, _ = replication
    for name in ("duo", "mdlm", "dcd"):
        run = load_trained(out / name)
        greedy, ancestral, _ = sample_both_tails(run, 4, 3, batch_size=3, seed=5)
        gen = torch.Generator().manual_seed(5)
        library = run.objective.sample(run.model, 3, run.config.data.seq_len, 4, greedy_tail=True,
                         generator=gen)  # fmt: skip
        assert torch.equal(greedy, library)
        assert ancestral.shape == greedy.shape


def test_steps_to_reach_interpolates():
    curve = [(10, 3.0), (20, 2.0), (30, 1.5)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert steps_to_reach(curve, 3.5) == 10.0
    assert steps_to_reach(curve, 1.0) is None
