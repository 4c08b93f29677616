"""Tokenizers for the example: byte- and character-level built in, BPE/WordPiece via ``tokenizers``.

Every tokenizer has ``vocab_size``, ``bos_id``, ``eos_id``, ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``to_dict()`` (a JSON-able spec) and ``save(directory)``; ``load_tokenizer``
and ``tokenizer_from_dict`` rebuild one. Ids run over [0, vocab_size); the diffusion model's
vocabulary is this ``vocab_size`` (plus one mask id for MDLM).

- ``ByteTokenizer``: UTF-8 bytes 0..255, BOS 256, EOS 257.
- ``CharTokenizer``: one id per character seen in a training text, plus BOS, EOS and UNK.
- ``HFTokenizer``: a ``tokenizers.Tokenizer`` — GPT-2 byte-level BPE from local ``vocab.json`` +
  ``merges.txt`` (BOS = EOS = ``<|endoftext|>``, as in the paper's OWT runs), BERT WordPiece
  from a local ``vocab.txt`` (BOS = ``[CLS]``, EOS = ``[SEP]``, as in LM1B runs), a saved
  ``tokenizer.json``, or a hub name through ``Tokenizer.from_pretrained`` (needs network).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "TextTokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
]

TOKENIZER_FILE = "tokenizer_spec.json"


class TextTokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, directory: str | Path) -> Path: ...


class _Base:
    vocab_size: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def decode_batch(self, rows: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in rows]


class ByteTokenizer(_Base):
    """UTF-8 bytes; BOS = 256, EOS = 257; decoding skips specials and replaces invalid UTF-8."""

    kind = "byte"

    def __init__(self) -> None:
        self.bos_id, self.eos_id, self.vocab_size = 256, 257, 258

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class CharTokenizer(_Base):
    """One id per character of ``alphabet`` (ids 0..n-1), then BOS = n, EOS = n+1, UNK = n+2.

    Build it from the training text with ``CharTokenizer.from_text``; characters not in the
    alphabet encode to UNK (or raise with ``strict=True``).
    """

    kind = "char"

    def __init__(self, alphabet: str | Sequence[str], *, strict: bool = False) -> None:
        chars = list(alphabet)
        if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("alphabet must be a non-empty sequence of distinct characters")
        self.alphabet = "".join(chars)
        self.strict = strict
        n = len(chars)
        self.bos_id, self.eos_id, self.unk_id, self.vocab_size = n, n + 1, n + 2, n + 3
        self._index = {c: i for i, c in enumerate(chars)}
        self._ascii_table: np.ndarray | None = None
        if all(ord(c) < 128 for c in chars):
            table = np.full(128, self.unk_id, dtype=np.int64)
            for c, i in self._index.items():
                table[ord(c)] = i
            self._ascii_table = table

    @classmethod
    def from_text(cls, text: str | Iterable[str], **kwargs: Any) -> CharTokenizer:
        seen: set[str] = set()
        for part in [text] if isinstance(text, str) else text:
            seen.update(part)
        if not seen:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(seen), **kwargs)

    def encode_array(self, text: str) -> np.ndarray:
        if self._ascii_table is not None and text.isascii():
            ids = self._ascii_table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        else:
            ids = np.array([self._index.get(c, self.unk_id) for c in text], dtype=np.int64)
        if self.strict and (ids == self.unk_id).any():
            bad = sorted({c for c in text if c not in self._index})
            raise ValueError(f"characters outside the tokenizer's alphabet: {bad[:10]}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.alphabet)
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < n:
                out.append(self.alphabet[i])
            elif i == self.unk_id:
                out.append("\ufffd")
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphabet": self.alphabet, "strict": self.strict}


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - tokenizers is in the examples extra
        raise ImportError(
            "BPE/WordPiece tokenizers need the `tokenizers` package: pip install tokenizers"
        ) from err
    return tokenizers


class HFTokenizer(_Base):
    """A ``tokenizers.Tokenizer`` with named BOS/EOS tokens (added if the vocabulary lacks them)."""

    kind = "hf"

    def __init__(self, tokenizer: Any, bos_token: str, eos_token: str) -> None:
        self.tokenizer = tokenizer
        wanted = dict.fromkeys([bos_token, eos_token])
        missing = [t for t in wanted if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = tokenizer.token_to_id(bos_token)
        self.eos_id = tokenizer.token_to_id(eos_token)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # No automatic [CLS]/[SEP] insertion: packing adds BOS/EOS between documents itself.
        tokenizer.no_padding()
        tokenizer.no_truncation()

    @classmethod
    def gpt2_bpe(cls, vocab_json: str | Path, merges_txt: str | Path) -> HFTokenizer:
        """GPT-2's byte-level BPE from local ``vocab.json`` and ``merges.txt``."""
        tk = _require_tokenizers()
        for p in (vocab_json, merges_txt):
            if not Path(p).is_file():
                raise FileNotFoundError(f"BPE vocabulary file not found: {p}")
        bpe = tk.ByteLevelBPETokenizer.from_file(str(vocab_json), str(merges_txt))
        return cls(bpe._tokenizer, "<|endoftext|>", "<|endoftext|>")

    @classmethod
    def bert_wordpiece(cls, vocab_txt: str | Path, *, lowercase: bool = True) -> HFTokenizer:
        """BERT's WordPiece from a local ``vocab.txt`` (bert-base-uncased for LM1B)."""
        tk = _require_tokenizers()
        if not Path(vocab_txt).is_file():
            raise FileNotFoundError(f"WordPiece vocabulary file not found: {vocab_txt}")
        wp = tk.BertWordPieceTokenizer(str(vocab_txt), lowercase=lowercase)
        inner = wp._tokenizer
        inner.post_processor = None
        return cls(inner, "[CLS]", "[SEP]")

    @classmethod
    def from_file(cls, path: str | Path, bos_token: str, eos_token: str) -> HFTokenizer:
        tk = _require_tokenizers()
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(tk.Tokenizer.from_file(str(path)), bos_token, eos_token)

    @classmethod
    def from_pretrained(cls, name: str, bos_token: str, eos_token: str) -> HFTokenizer:
        """By hub name (e.g. ``gpt2``, ``bert-base-uncased``); needs network access."""
        tk = _require_tokenizers()
        try:
            inner = tk.Tokenizer.from_pretrained(name)
        except Exception as err:
            raise RuntimeError(
                f"could not fetch tokenizer {name!r} from the Hugging Face hub ({err}); pass "
                "local vocabulary files instead (--data.tokenizer gpt2-bpe / bert-wordpiece with "
                "--data.tokenizer_files)"
            ) from err
        inner.post_processor = None
        return cls(inner, bos_token, eos_token)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tokenizer_json": self.tokenizer.to_str(),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }


_HUB_SPECIALS = {"gpt2": ("<|endoftext|>", "<|endoftext|>")}


def build_tokenizer(
    kind: str,
    *,
    text: str | Iterable[str] | None = None,
    files: Sequence[str | Path] = (),
) -> TextTokenizer:
    """Resolve a tokenizer by name (the example's config strings).

    ``byte``; ``char`` (needs ``text``); ``gpt2-bpe`` (files: vocab.json, merges.txt);
    ``bert-wordpiece`` (files: vocab.txt); ``json`` (files: tokenizer.json; BOS/EOS guessed from
    its special tokens); ``hub:<name>`` (Hugging Face hub, needs network).
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        if text is None:
            raise ValueError("a char tokenizer is built from the training text; none was given")
        return CharTokenizer.from_text(text)
    if kind == "gpt2-bpe":
        if len(files) != 2:
            raise ValueError("gpt2-bpe needs two files: vocab.json merges.txt")
        return HFTokenizer.gpt2_bpe(files[0], files[1])
    if kind == "bert-wordpiece":
        if len(files) != 1:
            raise ValueError("bert-wordpiece needs one file: vocab.txt")
        return HFTokenizer.bert_wordpiece(files[0])
    if kind == "json":
        if len(files) != 1:
            raise ValueError("json needs one file: tokenizer.json")
        tk = _require_tokenizers()
        inner = tk.Tokenizer.from_file(str(files[0]))
        vocab = inner.get_vocab(with_added_tokens=True)
        bos, eos = ("[CLS]", "[SEP]") if "[CLS]" in vocab else _HUB_SPECIALS["gpt2"]
        return HFTokenizer(inner, bos, eos)
    if kind.startswith("hub:"):
        name = kind[4:]
        default = ("[CLS]", "[SEP]") if "bert" in name else ("<s>", "</s>")
        bos, eos = _HUB_SPECIALS.get(name, default)
        return HFTokenizer.from_pretrained(name, bos, eos)
    raise ValueError(
        f"unknown tokenizer {kind!r}; choose byte, char, gpt2-bpe, bert-wordpiece, json or "
        "hub:<name>"
    )


def tokenizer_from_dict(spec: dict[str, Any]) -> TextTokenizer:
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(spec["alphabet"], strict=spec.get("strict", False))
    if kind == "hf":
        tk = _require_tokenizers()
        return HFTokenizer(
            tk.Tokenizer.from_str(spec["tokenizer_json"]), spec["bos_token"], spec["eos_token"]
        )
    raise ValueError(f"unknown tokenizer spec kind {kind!r}")


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """Load a tokenizer saved by ``save(directory)`` (a run directory holds one)."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer saved in {directory} (expected {path.name})")
    try:
        return tokenizer_from_dict(json.loads(path.read_bytes()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # corrupt or foreign file
        raise ValueError(f"{path} is not a saved tokenizer: {err!r}") from None
