"""examples.demo --quick: the whole pipeline (5 trainings, bounds, sampling, outputs) in seconds."""

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
    rows = {(r["method"], r["tail"], r["steps"]): r for r in summary["generation"]}
    expected = {("Duo", t) for t in ("greedy", "map", "none")} | {
        ("Duo+DCD", "greedy"), ("Duo+DCD", "map"), ("MDLM", "greedy"), ("MDLM+SDTT", "greedy")}
    assert set(rows) == {(m, t, s) for m, t in expected for s in (8, 2)} | {("AR", "-", 31)}
    for (method, tail, steps), r in rows.items():
        assert r["gen_ppl"] > 1 and r["entropy"] >= 0 and r["num_samples"] == 8
        if method.startswith("Duo"):  # uniform-state: N + 1 calls with a tail call, else N
            assert r["nfe"] == steps + (tail != "none")
        elif method != "AR":  # masked: the cache may skip calls
            assert 1 <= r["nfe"] <= steps + 1
    # greedy and MAP share one trajectory: the same sampling time, different last steps
    assert rows[("Duo", "greedy", 8)]["wall_s"] == rows[("Duo", "map", 8)]["wall_s"]
    assert [r["method"] for r in summary["validation"]] == ["AR", "MDLM", "MDLM+SDTT", "Duo",
                                                            "Duo+DCD"]
    assert all("zero_shot_ppl" in r for r in summary["validation"])
    for name in ("results.json", "results.md", "generation.png"):
        assert (out / name).is_file()
    assert json.loads((out / "results.json").read_text())["quick"] is True
    printed = capsys.readouterr().out
    assert "| method | tail | steps | NFE | gen. PPL | entropy | wall time (s) |" in printed
    assert printed.strip().splitlines()[-1].startswith("Done in")
