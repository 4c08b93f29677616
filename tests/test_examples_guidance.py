"""Class labels in the example: rows with one label each, label dropout, a labelled run that
checkpoints and resumes exactly, and the guided-sample table of ``examples.guidance``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.checkpoint import load_checkpoint
from examples.corpus import GENRES
from examples.data import LabelledRows, document_labels, prepare_data, read_documents
from examples.guidance import format_table, guided_samples, main
from examples.objectives import LabelDropout
from examples.train import load_trained, train
from tests.helpers import tiny_config

LETTERS = {"comedy": "abcde", "tragedy": "vwxyz", None: "klmno"}  # disjoint alphabets


def make_labelled_corpus(directory: Path) -> Path:
    """Two folders (the labels) of documents over disjoint letters, and an unlabelled file."""
    rng = np.random.default_rng(0)
    for label, letters in LETTERS.items():
        for i in range(6 if label else 1):
            words = [" ".join("".join(rng.choice(list(letters), 4)) for _ in range(6))
                     for _ in range(30)]  # fmt: skip
            folder = directory / label if label else directory
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"doc{i}.txt").write_text("\n".join(words) + "\n")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_labelled_corpus(tmp_path_factory.mktemp("labelled"))


def _letters(tokenizer, ids: np.ndarray) -> set[str]:
    return set(tokenizer.decode(ids.tolist())) - set(" \n")


@pytest.mark.parametrize("packing", [True, False])
def test_every_row_holds_text_of_its_own_label(corpus, packing):
    data = prepare_data(str(corpus), seq_len=32, val_fraction=0.2, packing=packing,
                        labels="folder")  # fmt: skip
    assert isinstance(data.train, LabelledRows) and data.label_names == ("comedy", "tragedy")
    rows, labels = data.train, data.train.labels
    assert set(labels.tolist()) == {0, 1, 2}  # 2: the null label of the top-level file
    for i in range(len(rows)):
        name = data.label_names[labels[i]] if labels[i] < 2 else None
        ids = np.asarray(rows[i])
        if not packing:
            ids = ids[rows.rows.mask(np.array([i]))[0]]
        assert _letters(data.tokenizer, ids) <= set(LETTERS[name]), (i, name)
    assert data.info["label_names"] == ["comedy", "tragedy"]


def test_genre_table_and_label_sources(corpus):
    assert sorted(set(GENRES.values())) == ["comedy", "history", "tragedy"]
    assert (GENRES["hamlet"], GENRES["tempest"], GENRES["henry_v"]) == ("tragedy", "comedy",
                                                                         "history")  # fmt: skip
    docs = read_documents(str(corpus))
    names, label_of = document_labels("folder", str(corpus), docs)
    assert names == ("comedy", "tragedy")
    assert sorted({label_of(d) for d in docs}) == [0, 1, 2]
    with pytest.raises(ValueError, match="shakespeare"):
        document_labels("genre", str(corpus), docs)
    with pytest.raises(ValueError, match="data.labels"):
        document_labels("colour", str(corpus), docs)


def test_label_dropout_honours_its_rate():
    labels = torch.randint(0, 3, (200_000,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    dropped = LabelDropout(3, 0.1)(labels, gen)
    null = dropped == 3
    assert abs(null.double().mean().item() - 0.1) < 0.003  # 4.7 standard deviations
    assert torch.equal(dropped[~null], labels[~null])  # the others keep their label
    state = gen.get_state()
    assert LabelDropout(3, 0.0)(labels, gen) is labels and torch.equal(gen.get_state(), state)
    assert bool((LabelDropout(3, 1.0)(labels, gen) == 3).all())


def _labelled(corpus: Path, out: Path, **extra):
    return tiny_config(corpus, out, **{"data.labels": "folder", "train.cond_dropout": 0.3,
                                       **extra})  # fmt: skip


def test_labelled_run_checkpoints_and_resumes_exactly(corpus, tmp_path):
    full = train(_labelled(corpus, tmp_path / "full"))
    first = train(_labelled(corpus, tmp_path / "split", **{"train.stop_after": 3}))
    rest = train(_labelled(corpus, tmp_path / "split", **{"train.resume": True}))
    assert first.losses + rest.losses == full.losses  # label dropout draws included
    state = load_checkpoint(tmp_path / "split")
    assert state["meta"]["model"]["num_classes"] == 2
    info = json.loads((tmp_path / "split" / "data_info.json").read_text())
    assert info["label_names"] == ["comedy", "tragedy"]
    run = load_trained(tmp_path / "split")
    assert run.model.label_embed.weight.shape[0] == 3  # two labels and the null label
    unlabelled = train(tiny_config(corpus, tmp_path / "plain", **{"train.steps": 2}))
    assert unlabelled.losses != full.losses[:2]  # the labels reach the model


def test_labels_need_a_diffusion_dit(corpus, tmp_path):
    with pytest.raises(ValueError, match="data.labels"):
        _labelled(corpus, tmp_path, **{"train.objective": "ar"})
    with pytest.raises(ValueError, match="cond_dropout"):
        _labelled(corpus, tmp_path, **{"train.cond_dropout": 1.5})


@pytest.mark.parametrize("objective", ["duo", "mdlm"])
def test_guided_sample_table(corpus, tmp_path, objective, capsys):
    run = tmp_path / objective
    train(_labelled(corpus, run, **{"train.objective": objective, "train.steps": 30,
                                    "train.eval_every": 30, "train.ckpt_every": 30,
                                    "train.lr": 3e-3}))  # fmt: skip
    rows = guided_samples(run, scales=(0.0, 1.0, 2.0), num_samples=4, steps=4, length=16)
    assert [(r.label, r.scale) for r in rows] == [
        (name, g) for name in ("comedy", "tragedy") for g in (0.0, 1.0, 2.0)
    ]  # fmt: skip
    assert all(0 <= r.hit_rate <= 1 and np.isfinite(r.nll) and r.samples == 4 for r in rows)
    model = load_trained(run).model
    z, sigma = torch.randint(0, 10, (2, 16)), torch.full((2,), 0.5)
    logits = [model(z, sigma, label=torch.full((2,), y)) for y in (0, 1, 2)]
    assert not torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], logits[2])
    assert "assigned to label" in format_table(rows)
    printed = main([str(run), "--scales", "0,2", "--num-samples", "2", "--steps", "2",
                    "--length", "8"])  # fmt: skip
    out = capsys.readouterr().out
    assert len(printed) == 4 and "tragedy" in out and "gamma" in out
    with pytest.raises(SystemExit):
        main([str(run), "--scales", "-1"])
    plain = tmp_path / "plain"
    train(tiny_config(corpus, plain, **{"train.objective": objective, "train.steps": 1}))
    with pytest.raises(ValueError, match="not a labelled run"):
        guided_samples(plain)
