"""benchmarks.run: the suites' summary rows (written as JSON, read back by the runner), the
summary tables, and one suite end to end. The runner and the suites are what is tested here."""

from __future__ import annotations

import json

import pytest

import benchmarks.bench_distill as bench_distill
import benchmarks.bench_dit as bench_dit
import benchmarks.bench_duality as bench_duality
import benchmarks.bench_losses as bench_losses
import benchmarks.bench_samplers as bench_samplers
import benchmarks.bench_sdtt as bench_sdtt
import benchmarks.rows as bench_rows
import benchmarks.run as run


def test_rows_round_trip_through_json(tmp_path):
    path = tmp_path / "rows.json"
    numeric_target = {"metric": "numeric target", "ours": 2.0, "baseline": 1.0, "ratio": 2.0,
                      "target": 1.1, "met": False}  # fmt: skip
    written = [bench_rows.row("a metric", "s", 0.25, 1.0, target="<= 0.5", met=True),
               numeric_target,
               bench_rows.row("a measurement", "", 3.0, None, target="- (measurement)")]
    bench_rows.write_rows(str(path), written)
    first, numeric, measured = run.read_rows("x", path)
    assert (first.suite, first.ours, first.baseline, first.ratio) == ("x", 0.25, 1.0, 0.25)
    assert first.target == "<= 0.5" and first.met and first.source == "main"
    assert numeric.target == "<= 1.1" and numeric.met is False and numeric.unit == ""
    assert measured.ratio is None and measured.met is None
    # no path: nothing written, no error
    bench_rows.write_rows(None, [bench_rows.row("ignored", "s", 1.0, 1.0)])


def test_missing_or_malformed_json_gives_na_rows(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("something else entirely\n")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    keyless = tmp_path / "keyless.json"
    keyless.write_text('[{"ours": 1.0}]')
    for path in (tmp_path / "absent.json", bad, empty, keyless):
        rows = run.read_rows("x", path)
        assert rows and all(r.ours is None for r in rows) and "n/a" in rows[0].metric


def test_the_suites_summary_rows():
    losses = bench_losses.summary_rows(120.5, 1500.25, 0.25, 1.0, (4, 256, 50257))
    assert [r["unit"] for r in losses] == ["MiB", "s"] and all(r["met"] for r in losses)
    assert losses[1]["ours"] == 0.25 and losses[1]["baseline"] == 1.0
    timed = [("ancestral (mid)", 0.05, 1.23, 0.80), ("nucleus (mid)", 0.3, 1.23, 0.80)]
    steps = bench_samplers.step_summary(timed, ", B=4 L=512")
    mid, nucleus = steps
    assert mid["ours"] == 0.05 and mid["baseline"] == 0.8 and mid["met"]
    assert mid["ratio"] == pytest.approx(0.05 / 0.8)
    assert nucleus["met"] is None
    seeded = bench_samplers.rowwise_summary([("ancestral", 0.05, 0.052), ("masked", 0.04, 0.05)],
                                            "")  # fmt: skip
    got = [(r["ours"], r["baseline"], r["met"]) for r in seeded]
    assert got == [(0.052, 0.05, True), (0.05, 0.04, False)]
    bias = bench_samplers.bias_summary({"expected": 10.0, "sd": 2.0, "ours": 11, "gumbel32": 2})
    assert bias["unit"] == "sd" and bias["ours"] == 0.5 and bias["baseline"] == 4.0 and bias["met"]
    dit = bench_dit.summary_row("fwd+bwd (model only)", 0.4, 0.38)
    assert dit["ours"] == 0.4 and dit["baseline"] == 0.73 and dit["met"]
    worst = {"value": 3e-13, "derivative": 4e-12, "inverse": 2e-15, "build_s": 0.0805}
    value, slope, build = bench_duality.summary_rows(worst, monotone=True)
    assert value["ours"] == 3e-13 and value["met"] and build["ours"] == 80.5 and build["met"]
    assert slope["met"] is True  # a bool, whatever type ``monotone`` came in as
    assert bench_duality.summary_rows(worst, monotone=0.0)[1]["met"] is False


def test_the_distillation_summaries_compare_student_and_teacher():
    metrics = lambda nll: {"nll": nll, "tv_unigram": 0.0, "tv_bigram": 0.0, "distinct": 1.0}
    rows = [("teacher", "loglin", 4, "greedy", metrics(9.0)),
            ("DCD KL(s||t)", "loglin", 4, "greedy", metrics(8.0))]  # fmt: skip
    (distill,) = bench_distill.summary_rows(rows, entropy=7.5)
    assert distill["ours"] == 0.5 and distill["baseline"] == 1.5 and distill["met"]
    rows = [("mdlm", 4, metrics(9.383)), ("SDTT(mdlm) KL(s||t)", 4, metrics(9.167))]
    (sdtt,) = bench_sdtt.summary_rows(rows, entropy=6.646)
    assert sdtt["ours"] == pytest.approx(2.521) and sdtt["baseline"] == pytest.approx(2.737)
    assert sdtt["met"]


def test_summary_table_and_machine():
    table = run.summary_table([run.Row("x", "a metric", "s", 1.0, 4.0, target="<= 0.5",
                                       met=True)])  # fmt: skip
    assert "0.250" in table and "yes" in table
    info = run.machine_info()
    assert {"cpu", "cores", "torch", "threads"} <= set(info)


def test_the_summary_splits_speed_from_known_answers():
    rows = [run.Row("distill", "a gap", "nats", 0.5, 1.5), run.Row("losses", "a time", "s", 1, 2)]
    speed, known = run.grouped_tables(rows).split("\n\n")
    assert speed.startswith("speed comparisons") and "losses" in speed and "distill" not in speed
    assert known.startswith("known-answer experiments") and "distill" in known
    assert {s.kind for s in run.SUITES} == {run.SPEED, run.KNOWN_ANSWER}


def test_one_suite_end_to_end(tmp_path, capsys):
    record = run.main(["--only", "dcd_step", "--skip-pytest", "--quick", "--out", str(tmp_path)])
    rows = record["rows"]
    assert [r["suite"] for r in rows] == ["dcd_step", "dcd_step"]
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "=== summary" in printed and "machine:" in printed
    saved = list(tmp_path.glob("*-summary.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["rows"] == rows
