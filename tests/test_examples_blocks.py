"""The example with block diffusion (``--model.block_size``): train a tiny Duo and MDLM block
model, resume it exactly, evaluate its bound, and sample it past its training length with a
prompt, stopping at EOS (``examples.sample --length --eos``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from examples.checkpoint import load_checkpoint
from examples.evaluate import main as evaluate_main
from examples.metrics import read_csv
from examples.sample import draw, until_eos
from examples.sample import main as sample_main
from examples.train import load_trained, train
from tests.helpers import tiny_config

SEQ_LEN, BLOCK = 16, 4


def short_documents(directory: Path) -> Path:
    """Forty documents of one short line each: EOS follows every ~20 characters, so even a
    barely trained model writes it often."""
    directory.mkdir(parents=True, exist_ok=True)
    words = "to be or not that is the question".split()
    for i in range(40):
        line = " ".join(words[(i + j) % len(words)] for j in range(3 + i % 3))
        (directory / f"doc{i:02d}.txt").write_text(line + ".\n")
    return directory


def block_config(corpus: Path, out: Path, objective: str, **overrides):
    return tiny_config(corpus, out, **{
        "train.objective": objective, "model.block_size": BLOCK, "data.seq_len": SEQ_LEN,
        "train.eval_sequences": 8, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("block_runs")
    corpus = short_documents(root / "corpus")
    out = {"corpus": corpus}
    for objective in ("duo", "mdlm"):
        train(block_config(corpus, root / objective, objective))
        out[objective] = root / objective
    train(tiny_config(corpus, root / "plain", **{"train.objective": "duo", "train.steps": 3,
                                                 "data.seq_len": SEQ_LEN}))  # fmt: skip
    out["plain"] = root / "plain"
    train(block_config(corpus, root / "no_context", "duo", **{"train.steps": 2,
                                                              "duo.clean_context": 0.0}))
    out["no_context"] = root / "no_context"
    return out


@pytest.mark.parametrize("objective", ["duo", "mdlm"])
def test_a_block_run_resumes_bit_for_bit(runs, tmp_path, objective):
    split = tmp_path / "split"
    first = train(block_config(runs["corpus"], split, objective, **{"train.stop_after": 3}))
    rest = train(block_config(runs["corpus"], split, objective, **{"train.resume": True}))
    assert first.stopped_early and first.step == 3 and rest.step == 6
    full_losses = [float(r["loss"]) for r in read_csv(runs[objective] / "train_log.csv")]
    assert [float(r["loss"]) for r in read_csv(split / "train_log.csv")] == full_losses
    a, b = load_checkpoint(runs[objective]), load_checkpoint(split)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert load_trained(split).model.block_size == BLOCK


@pytest.mark.parametrize("objective", ["duo", "mdlm"])
def test_evaluate_gives_the_block_bound_the_training_loop_logged(runs, objective):
    """The block NELBO of the final weights, by the command, is the logged number to the last
    digit; recomputed here per sequence from the objective's bound terms in float64."""
    from examples.data import masked_validation_batches, prepare_data

    logged = read_csv(runs[objective] / "val_log.csv")[-1]
    res = evaluate_main([str(runs[objective]), "--zero-shot", ""])["validation"]
    assert res["nelbo"] == float(logged["nelbo"]) and res["ppl"] == pytest.approx(
        math.exp(res["nelbo"]), rel=1e-12)
    run = load_trained(runs[objective])
    assert run.objective.diffusion.block_size == BLOCK
    cfg = run.config
    data = prepare_data(cfg.data.source, tokenizer=run.tokenizer, seq_len=SEQ_LEN,
                        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    gen = torch.Generator().manual_seed(res["seed"])
    sums = []
    with torch.no_grad():
        for batch in masked_validation_batches(data.val, 4, cfg.train.eval_sequences):
            terms = run.objective.bound(run.model, batch.x_0, generator=gen).terms
            sums.append(sum(v.double() for v in terms.values()).sum(1))
    per_token = float(torch.cat(sums).sum()) / (res["sequences"] * SEQ_LEN)
    assert res["nelbo"] == pytest.approx(per_token, rel=1e-12)


@pytest.mark.parametrize("objective", ["duo", "mdlm"])
def test_sample_past_the_training_length_with_a_prompt_stops_at_eos(runs, capsys, objective):
    prompt, length = "to b", 3 * SEQ_LEN - 4  # one whole block; 2.75 training lengths
    argv = [str(runs[objective]), "--length", str(length), "--eos", "--prompt", prompt,
            "--steps", "2", "--num-samples", "8", "--seed", "3"]  # fmt: skip
    texts = sample_main(argv)
    printed = capsys.readouterr().out
    run = load_trained(runs[objective])
    rows = draw(run, num_samples=8, steps=2, seed=3, tail="greedy", prompt=prompt,
                length=length, eos=True)  # fmt: skip
    assert rows.shape == (8, length)
    eos, stopped = run.tokenizer.eos_id, 0
    for row, text in zip(rows, texts, strict=True):
        assert text.startswith(prompt)
        kept, stop = until_eos(row, eos, start=len(prompt))
        assert text == run.tokenizer.decode(kept.tolist())
        if stop is not None:  # the sampler pads a stopped row with EOS; nothing of it printed
            stopped += 1
            assert bool((row[stop:] == eos).all()) and bool((kept[len(prompt):] != eos).all())
            assert f"stopped at EOS after {stop} tokens" in printed
    assert stopped >= 1 and printed.count("---\n") == 8
    assert f"blocks of {BLOCK}, 2 steps per block, tail greedy, {length} tokens" in printed
    assert sample_main(argv) == texts  # seeded


def test_draw_passes_the_window_and_the_prefix_to_the_block_sampler(runs):
    """The DiT declares no training length: the context window is the run's data.seq_len; the
    prompt is the (B, P) clean prefix."""
    run = load_trained(runs["mdlm"])
    got = draw(run, num_samples=2, steps=2, seed=7, tail="greedy", prompt="to b", length=40,
               batch_size=2)  # fmt: skip
    prefix = torch.tensor([run.tokenizer.encode("to b")] * 2)
    with torch.no_grad():
        want = run.objective.sample(run.model.eval(), 2, 40, 2, tail="greedy", prompt=prefix,
                                    window=SEQ_LEN, generator=torch.Generator().manual_seed(7),
                                    device=torch.device("cpu"))  # fmt: skip
    assert torch.equal(got, want)


def test_until_eos_cuts_after_the_prompt():
    row = torch.tensor([5, 9, 1, 2, 9, 9])
    kept, stop = until_eos(row, 9, start=2)
    assert stop == 4 and kept.tolist() == [5, 9, 1, 2]
    assert until_eos(row, 7) == (row, None)


@pytest.mark.parametrize("run_name, argv, message", [
    ("plain", ["--length", "40"], "--length needs a block model"),
    ("plain", ["--eos"], "--eos needs a block model"),
    ("no_context", ["--prompt", "to"], "not a multiple of the block size 4"),
    ("mdlm", ["--prompt", "to be or not", "--length", "8"], "give a shorter prompt"),
])  # fmt: skip
def test_block_options_are_refused_with_a_message(runs, capsys, run_name, argv, message):
    with pytest.raises(SystemExit) as exit_:
        sample_main([str(runs[run_name]), "--steps", "2", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
