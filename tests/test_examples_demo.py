"""examples.demo --quick: the whole pipeline (4 trainings, bounds, sampling, outputs) in seconds."""

from __future__ import annotations

import json

from examples.demo import main
from tests.helpers import make_corpus


def test_quick_demo_end_to_end(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    zero_shot = tmp_path / "zero_shot.txt"
    zero_shot.write_text("A different text that none of the models trained on.\n" * 20)
    out = tmp_path / "demo"
    summary = main(["--quick", "--data", str(corpus), "--zero-shot", str(zero_shot),
                    "--out", str(out), "--threads", "1", "--steps", "8,2"])  # fmt: skip
    methods = {r["method"] for r in summary["generation"]}
    assert methods == {"Duo", "Duo+DCD", "Duo (DCD grid)", "MDLM", "AR"}
    for r in summary["generation"]:
        assert r["gen_ppl"] > 1 and r["entropy"] >= 0 and r["num_samples"] == 8
    assert [r["method"] for r in summary["validation"]] == ["AR", "MDLM", "Duo", "Duo+DCD"]
    assert all("zero_shot_ppl" in r for r in summary["validation"])
    for name in ("results.json", "results.md", "generation.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["quick"] is True
    printed = capsys.readouterr().out
    assert "| method | steps | gen. PPL | entropy | wall time (s) |" in printed
    assert printed.strip().splitlines()[-1].startswith("Done in")
