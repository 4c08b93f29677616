"""examples.replicate at toy size: every section of the report, its plots and its tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from examples.replicate import main, sample_tails, steps_to_reach
from tests.helpers import make_corpus


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicate")
    corpus = make_corpus(tmp / "corpus")
    for label, words in (("comedy", "merry jest wit love"), ("tragedy", "grief blood death woe")):
        (corpus / label).mkdir()  # folder labels for section (f)
        for i in range(3):
            (corpus / label / f"{label}{i}.txt").write_text(f"{words} {i}\n" * 60)
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
                    "## (e) The 8-step comparison, one factor at a time",
                    "## (f) Classifier-free guidance",
                    "## Configuration"):  # fmt: skip
        assert heading in report
    for name in summary["plots"]:
        assert (docs / name).is_file() and (docs / name).stat().st_size > 1000
        assert f"]({name})" in report
    assert "minutes** of wall time" in report and "cores" in report
    assert (out / "results.json").is_file()
    # every run trained, every model evaluated, both tails at every step count
    methods = [r["method"] for r in summary["perplexity"]]
    assert methods == ["AR", "MDLM", "MDLM+SDTT", "Duo", "Duo (no curriculum)", "Duo+DCD"]
    assert all(r["val_ppl"] > 1 and r["zero_shot_ppl"] > 1 for r in summary["perplexity"])
    gen = {(r["method"], r["steps"], r["tail"]): r for r in summary["generation"]}
    uniform = {(m, s, t) for m in ("Duo", "Duo+DCD") for s in (8, 2)
               for t in ("greedy", "map", "none")}  # fmt: skip
    masked = {(m, s, t) for m in ("MDLM", "MDLM+SDTT") for s in (8, 2) for t in ("greedy", "none")}
    assert set(gen) == uniform | masked
    for (method, steps, tail), r in gen.items():
        if (method, steps, tail) in uniform:
            assert r["nfe"] == steps + (tail != "none")
        else:  # the masked sampler's cache may skip calls
            assert 1 <= r["nfe"] <= steps + (tail != "none")
    assert "replication_frontier.png" in summary["plots"]
    # the ablation: one row per factor, each with both models measured
    factors = [r["factor"] for r in summary["ablation"]]
    assert factors == ["none (section c)", "tail", "tail", "student schedule",
                       "distillation length", "vocabulary"]  # fmt: skip
    assert all(r["ratio"] > 0 for r in summary["ablation"])
    assert summary["bpe"]["vocab_size"] > 256 and summary["bpe"]["chars_per_token"] > 1
    assert len(summary["curriculum"]["gradient_variance"]) == 2
    # (f): a guided cell per label and scale, with its sample
    guided = summary["guidance"]
    assert [(r["label"], r["scale"]) for r in guided] == [
        (label, gamma) for label in ("comedy", "tragedy") for gamma in (0.0, 2.0)]
    assert all(0 <= r["hit_rate"] <= 1 and r["nll"] > 0 and r["example"] for r in guided)
    assert {r["claim"].split(":")[0] for r in summary["verdicts"]} >= {
        "curriculum", "validation PPL ordering"}


def test_tables_are_in_the_report_as_printed(replication):
    summary, _, docs = replication
    report = (docs / "replication.md").read_text()
    # the printed tables are the report's tables: spot-check a row of each
    ar = summary["perplexity"][0]
    assert f"| AR | {ar['val_ppl']:.3f} | exact |" in report
    for row in summary["generation"]:
        assert (f"| {row['method']} | {row['tail']} | {row['steps']} | {row['nfe']} | "
                f"{row['gen_ppl']:.3f} |") in report  # fmt: skip
    # the paper's Tables 5 and 7 beside ours
    assert "| Duo+DCD | greedy | 36.5 / 5.19 | 69.6 / 5.30 |" in report
    assert "| MDLM+SDTT | greedy | 36.9 / 5.39 | 193.1 / 5.58 |" in report


def test_tails_equal_the_library_tails(replication):
    """Greedy is taken from the MAP run's tail call: the same samples as tail="greedy"."""
    from examples.train import load_trained

    _, out, _ = replication
    for name in ("duo", "mdlm", "dcd", "sdtt"):
        run = load_trained(out / name)
        tails = ("greedy", "none") if name in ("mdlm", "sdtt") else ("greedy", "map", "none")
        got = sample_tails(run, 4, 3, batch_size=2, seed=5, tails=tails)
        assert list(got) == list(tails)
        for tail in tails:
            gen = torch.Generator().manual_seed(5)
            length = run.config.data.seq_len
            library = torch.cat([run.objective.sample(run.model, n, length, 4, tail=tail,
                                                      generator=gen) for n in (2, 1)])
            assert torch.equal(got[tail].samples, library), (name, tail)
        if name == "duo":
            assert got["greedy"].nfe == got["map"].nfe == 5 and got["none"].nfe == 4
            assert got["greedy"].wall_s == got["map"].wall_s


def test_masked_runs_have_no_map_tail(replication):
    from examples.train import load_trained

    _, out, _ = replication
    with pytest.raises(ValueError, match="map"):
        sample_tails(load_trained(out / "mdlm"), 2, 2, batch_size=2, seed=0, tails=("map",))


def test_steps_to_reach_interpolates():
    curve = [(10, 3.0), (20, 2.0), (30, 1.5)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert steps_to_reach(curve, 3.5) == 10.0
    assert steps_to_reach(curve, 1.0) is None


DATA = Path(__file__).parent / "data"


def test_render_only_rewrites_the_same_report(tmp_path, monkeypatch):
    """``--render-only`` from a saved ``raw.json`` (a toy run's measurements, its paths and
    machine made neutral) writes, byte for byte, the report that the single-module replication
    wrote from the same file: splitting the code into modules changed no character (the
    expected file since gained the run config's new ``duo.clean_context`` and
    ``model.block_size``, and the scale's block fields; a ``raw.json`` without block runs has
    no block section)."""
    from examples.replicate import report

    out, docs = tmp_path / "runs", tmp_path / "docs"
    out.mkdir()
    shutil.copy(DATA / "replicate_raw.json", out / "raw.json")
    monkeypatch.setattr(report, "write_plots", lambda *args: [])  # the plots: tested above
    summary = main(["--render-only", "--out", str(out), "--docs", str(docs)])
    assert summary["rendered_again"]
    assert (docs / "replication.md").read_bytes() == (DATA / "replication_toy.md").read_bytes()


def test_block_section_measures_every_block_size_beside_ar(replication):
    """Duo and MDLM at b = L, 16, 4, 1 beside AR: bounds, samples without a tail at 2 and 8
    steps per block (NFE = L / b x steps, fewer for MDLM where it reuses a prediction), the
    computed trend sentence, the long samples."""
    summary, _, docs = replication
    report = (docs / "replication.md").read_text()
    assert "## Block diffusion" in report
    blocks = summary["blocks"]
    rows = blocks["table"]
    sizes = ("32 (L)", "16", "4", "1")
    assert [(r["method"], r["b"]) for r in rows] == [
        *[(m, b) for m in ("Duo", "MDLM") for b in sizes], ("AR", "1 (causal)")]
    assert all(r["ppl"] > 1 for r in rows)
    ppl = {r["method"]: r["val_ppl"] for r in summary["perplexity"]}
    assert rows[-1]["ppl"] == ppl["AR"] and rows[0]["ppl"] == ppl["Duo"]
    assert rows[4]["ppl"] == ppl["MDLM"]
    for r in rows[:8]:
        assert f"| {r['method']} | {r['b']} | {r['ppl']:.3f} | upper bound |" in report
        for steps in (2, 8):
            nfe = 32 // int(r["b"].split()[0]) * steps
            got = int(r[f"gen_{steps}"].rsplit("(", 1)[1].rstrip(")"))
            assert got == nfe if r["method"] == "Duo" else 1 <= got <= nfe, (r, steps)
    # the sentence is computed from the table
    assert blocks["trend"] in report
    for method, part in (("Duo", rows[:4]), ("MDLM", rows[4:8])):
        assert f"{method} " + " → ".join(f"{r['ppl']:.3f}" for r in part) in blocks["trend"]
    assert f"AR {ppl['AR']:.3f}. Ours moves toward AR's for" in blocks["trend"]
    for long in blocks["long"]:
        assert long["length"] == 3 * 32 and long["block_size"] == 4
        assert 0 <= long["stopped"] <= long["num_samples"]
        assert (long["stop"] is None) == (long["stopped"] == 0)
        assert long["text"].replace("\n", " / ") in report


def test_only_blocks_runs_the_block_section_alone(tmp_path, monkeypatch, capsys):
    """``--only blocks`` trains Duo, MDLM, AR and the block runs, prints the block table and
    leaves the report alone (here with one block size, to stay fast)."""
    from dataclasses import replace

    from examples.replicate import cli

    monkeypatch.setitem(cli.SCALES, "toy", replace(cli.SCALES["toy"], block_sizes=(16,),
                                                   block_steps=(2,), num_samples=4))
    corpus = make_corpus(tmp_path / "corpus")
    out, docs = tmp_path / "runs", tmp_path / "docs"
    got = main(["--scale", "toy", "--only", "blocks", "--data", str(corpus), "--zero-shot", "",
                "--out", str(out), "--docs", str(docs), "--workers", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert [(r["method"], r["b"]) for r in got["block_rows"]] == [
        ("Duo", "32 (L)"), ("Duo", "16"), ("MDLM", "32 (L)"), ("MDLM", "16"),
        ("AR", "1 (causal)")]
    assert got["block_md"] in printed and got["block_trend"] in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "ar", "duo", "duo_b16", "mdlm", "mdlm_b16"]
    assert (out / "raw_blocks.json").is_file() and not (docs / "replication.md").exists()
    assert [g["block_size"] for g in got["block_long"]] == [16, 16]
