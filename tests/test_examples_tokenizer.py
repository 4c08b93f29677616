"""examples.tokenizer: byte/char round trips, local BPE and WordPiece files, save and load."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)


@given(st.text(max_size=200))
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text


@given(st.text(alphabet="abc xyz\n!é", max_size=200))
def test_char_round_trip(text):
    tok = CharTokenizer.from_text("abc xyz\n!é")
    assert tok.decode(tok.encode(text)) == text


def test_char_specials_unknowns_and_strict():
    tok = CharTokenizer.from_text("hello")
    assert tok.vocab_size == 4 + 3
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (4, 5, 6)
    assert tok.encode("hex") == [1, 0, tok.unk_id]
    assert tok.decode([tok.bos_id, 1, 0, tok.eos_id]) == "he"
    with pytest.raises(ValueError, match="outside the tokenizer's alphabet"):
        CharTokenizer("helo", strict=True).encode("hex")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def test_save_and_load(tmp_path):
    tok = CharTokenizer.from_text("the quick brown fox")
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode("fox") == tok.encode("fox")
    with pytest.raises(FileNotFoundError, match="no tokenizer saved"):
        load_tokenizer(tmp_path / "elsewhere")


def _gpt2_files(tmp_path):
    # A miniature GPT-2 vocabulary: byte-level symbols ("Ġ" is the space) and three merges.
    vocab = {"h": 0, "e": 1, "l": 2, "o": 3, "\u0120": 4, "w": 5, "r": 6, "d": 7,
             "he": 8, "ll": 9, "llo": 10, "\u0120w": 11}  # fmt: skip
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nl l\nll o\n\u0120 w\n")
    return [tmp_path / "vocab.json", tmp_path / "merges.txt"]


def test_gpt2_bpe_from_local_files(tmp_path):
    tok = build_tokenizer("gpt2-bpe", files=_gpt2_files(tmp_path))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode("hello world")
    assert ids == [8, 10, 11, 3, 6, 2, 7]
    assert tok.decode(ids) == "hello world"
    # <|endoftext|> is missing from this vocabulary: it is added and serves as BOS and EOS.
    assert tok.bos_id == tok.eos_id == 12 and tok.vocab_size == 13
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode("hello world") == ids and again.vocab_size == 13


def test_bert_wordpiece_from_local_file(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
             "##s", "."]  # fmt: skip
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = build_tokenizer("bert-wordpiece", files=[tmp_path / "vocab.txt"])
    ids = tok.encode("The cats sat on the mat.")
    assert ids == [5, 6, 10, 7, 8, 5, 9, 11]  # lower-cased, "cats" = cat + ##s, no [CLS]/[SEP]
    assert tok.decode(ids) == "the cats sat on the mat."
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (2, 3, 12)


def test_bad_tokenizer_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("sentencepiece")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_tokenizer("gpt2-bpe", files=[tmp_path / "v.json", tmp_path / "m.txt"])
    with pytest.raises(ValueError, match="two files"):
        build_tokenizer("gpt2-bpe")
    with pytest.raises(ValueError, match="training text"):
        build_tokenizer("char")
