"""benchmarks.run: the summary parsers read what the suites print, and one suite end to end."""

from __future__ import annotations

import json

import pytest

from benchmarks import run

LOSSES = """uniform_nelbo, B=4 L=256 K=50257, float32, forward+backward, 1 thread
                                  lean       naive     ratio    target
peak extra memory (MiB)        120.500    1500.250     0.080    <= 0.3 ok
time fwd+bwd (s)                 0.250       1.000     0.250    <= 0.5 ok
"""

SAMPLERS = """B=4 L=512 K=50257  threads=1  torch 2.13.0+cpu
step                      ours  baseline  ratio  lean f64  ratio  target ratio <= 0.25
ancestral (mid)          0.050      1.23  0.041      0.80  0.063  ok
nucleus (mid)            0.300      1.23  0.244      0.80  0.375  n/a: no filtering
ancestral (all_draw)     0.090      1.20  0.075      0.70  0.129  ok
ancestral step, seed=         0.050    0.052  1.040  ok
masked step, seed=            0.040    0.050  1.250  MISSED
  ancestral  +     12.3 MiB = +0.123 tensors; with the logits 1.123 (target <= 2) ok
  baseline   +   1234.5 MiB = +0.789 tensors; run as B=1 slices; a full batch needs ~+3.2
  ours          12  (+0.3 sd)  1.2 s
  gumbel32       1  (-3.9 sd)  0.8 s
"""

DIT = ("tiny fwd+bwd (model only)     B=2 L=128 K=50258: wall median 0.400 s (min 0.390), CPU "
       "median 0.380 s; reference 0.73 s / ours = 1.83x wall, 1.92x CPU (target 1.5x)\n")

DUALITY = """      K | max|T-T_ref| | build (ms) header (abridged)
      2 |     1.00e-15 |              2.00e-14 |       3.10 |      yes |          1.00e-16
  50257 |     3.00e-13 |              4.00e-12 |      80.50 |      yes |          2.00e-15
targets |        1e-09 |                 1e-08 |       1000 |      yes |             1e-09
"""

CURRICULUM = """     tau |  var relaxed | var discrete | discrete/relaxed
   1e-03 |   9.5851e-06 |   9.5844e-06 |            1.000   (0.4 s)
   1e+00 |   8.0000e-06 |   9.5844e-06 |            1.198   (0.4 s)
"""

DISTILL = """model         grid   steps  NFE tail          NLL |NLL-H| TV uni  TV bi distinct
teacher       loglin     4    5 greedy      9.000   1.500  0.050  0.100    0.900
DCD KL(s||t)  loglin     4    5 greedy      8.000   0.500  0.040  0.080    0.800
"""

SDTT = """model                 steps     NLL |NLL-H| TV uni  TV bi distinct
mdlm                      4   9.383   2.737  0.014  0.135    0.367
SDTT(mdlm) KL(s||t)       4   9.167   2.521  0.016  0.124    0.347
"""


def test_parsers_read_the_suites_output():
    losses = run.parse_losses(LOSSES)
    assert [r.unit for r in losses] == ["MiB", "s"] and all(r.met for r in losses)
    assert losses[1].ours == 0.25 and losses[1].baseline == 1.0
    samplers = run.parse_samplers(SAMPLERS)
    mid = samplers[0]
    assert mid.ours == 0.05 and mid.baseline == 0.8 and mid.met
    assert mid.ratio == pytest.approx(0.05 / 0.8)
    assert any(r.unit == "tensors" and r.ours == 1.123 and r.baseline == pytest.approx(4.2)
               for r in samplers)  # fmt: skip
    assert any(r.unit == "sd" and r.ours == 0.3 and r.baseline == 3.9 for r in samplers)
    assert next(r for r in samplers if "nucleus" in r.metric).met is None
    seeded = [r for r in samplers if "seed=" in r.metric]
    assert [(r.ours, r.baseline, r.met) for r in seeded] == [(0.052, 0.05, True),
                                                            (0.05, 0.04, False)]  # fmt: skip
    (dit,) = run.parse_dit(DIT)
    assert dit.ours == 0.4 and dit.baseline == 0.73 and dit.met
    value, slope, build = run.parse_duality(DUALITY)
    assert value.ours == 3e-13 and value.met and build.ours == 80.5 and build.met
    assert len(run.parse_curriculum(CURRICULUM)) == 2
    (distill,) = run.parse_distill(DISTILL)
    assert distill.ours == 0.5 and distill.baseline == 1.5 and distill.met
    (sdtt,) = run.parse_sdtt(SDTT)
    assert sdtt.ours == 2.521 and sdtt.baseline == 2.737 and sdtt.met


def test_a_changed_format_gives_na_rows():
    for parse in (run.parse_losses, run.parse_samplers, run.parse_dit, run.parse_duality,
                  run.parse_curriculum, run.parse_distill, run.parse_sdtt):  # fmt: skip
        rows = parse("something else entirely\n")
        assert rows and all(r.ours is None for r in rows) and "n/a" in rows[0].metric


def test_summary_table_and_machine():
    table = run.summary_table([run.Row("x", "a metric", "s", 1.0, 4.0, target="<= 0.5",
                                       met=True)])  # fmt: skip
    assert "0.250" in table and "yes" in table
    info = run.machine_info()
    assert {"cpu", "cores", "torch", "threads"} <= set(info)


def test_one_suite_end_to_end(tmp_path, capsys):
    record = run.main(["--only", "dcd_step", "--skip-pytest", "--quick", "--out", str(tmp_path)])
    rows = record["rows"]
    assert [r["suite"] for r in rows] == ["dcd_step", "dcd_step"]
    assert all(r["ours"] > 0 and r["baseline"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "=== summary" in printed and "machine:" in printed
    saved = list(tmp_path.glob("*-summary.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["rows"] == rows
