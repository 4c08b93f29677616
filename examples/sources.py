"""Text sources: the documents a run trains and validates on, their split, their labels.

Sources (``read_documents``):
  - a built-in corpus name: ``shakespeare`` (training default) or ``milton`` (zero-shot);
  - a local ``.txt``/``.md`` file (one document) or ``.jsonl`` file (one document per line, its
    ``text`` field), or a directory of such files (searched recursively, sorted by path);
  - ``hf:openwebtext`` or ``hf:lm1b`` (or ``hf:<name>[:<config>]``) through Hugging Face
    ``datasets`` when it is installed. OpenWebText has no validation split; as in the paper, the
    last 100k documents of ``train`` are the validation set. LM1B uses its ``test`` split.

The split (``split_documents``) holds out whole documents, chosen by a hash of their names and
the split seed. Labels (``document_labels``): ``genre`` or ``folder`` (see ``examples.data``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from examples.corpus import CORPORA, GENRES, Document, load_corpus

__all__ = ["LABELS", "document_labels", "read_documents", "split_documents"]

TEXT_SUFFIXES = (".txt", ".md", ".text")
OWT_VALIDATION_DOCS = 100_000


def _read_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 text is refused by name (a binary file would
    otherwise train as noise, and a Latin-1 one with replacement characters)."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(
            f"{path} is not a text file (it holds NUL bytes): the data source must be UTF-8 text "
            "(.txt/.md/.jsonl files)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}): "
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # newlines as open() reads them


def _read_file(path: Path) -> list[Document]:
    text = _read_text(path)
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.split("\n")):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {i + 1}: not a JSON object ({err})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text", ""), str):
                    raise ValueError(
                        f'{path}, line {i + 1}: expected an object with a "text" string'
                    )
                text_i = record.get("text", "")
                if text_i.strip():
                    docs.append(Document(f"{path.name}:{i}", text_i))
        return docs
    return [Document(path.name, text)] if text.strip() else []


def _hf_documents(spec: str, split: str, max_documents: int | None) -> Iterator[Document]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            f"data source {spec!r} needs the Hugging Face `datasets` package "
            "(pip install datasets), or give a local text file or directory instead"
        ) from err
    name, _, config = spec[3:].partition(":")
    if name == "openwebtext":
        ds = datasets.load_dataset("openwebtext", split="train")
        n = len(ds)
        lo, hi = (n - OWT_VALIDATION_DOCS, n) if split != "train" else (0, n - OWT_VALIDATION_DOCS)
    else:
        hf_split = {"validation": "test"}.get(split, split) if name == "lm1b" else split
        ds = datasets.load_dataset(name, config or None, split=hf_split)
        lo, hi = 0, len(ds)
    if max_documents is not None:
        hi = min(hi, lo + max_documents)
    for i in range(lo, hi):
        yield Document(f"{name}/{split}/{i}", ds[i]["text"])


def read_documents(
    source: str,
    *,
    split: str = "train",
    cache_dir: str | Path | None = None,
    max_documents: int | None = None,
) -> list[Document]:
    """Read a data source into documents (see the module docstring for the accepted forms).

    ``split`` only matters for ``hf:`` sources (``train`` or ``validation``); local sources are
    split afterwards by ``split_documents``. Raises FileNotFoundError for a missing path and
    ValueError when a path holds no text.
    """
    if source in CORPORA:
        docs = load_corpus(source, cache_dir)
    elif source.startswith("hf:"):
        docs = list(_hf_documents(source, split, max_documents))
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"data path {source!r} does not exist (expected a text file, a directory of "
                f".txt/.md/.jsonl files, a built-in corpus {sorted(CORPORA)} or hf:<dataset>)"
            )
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl")
            )  # fmt: skip
            if not files:
                raise ValueError(f"data directory {source!r} contains no .txt/.md/.jsonl files")
            docs = []
            for f in files:
                for d in _read_file(f):
                    docs.append(Document(str(f.relative_to(path)) + d.name[len(f.name) :], d.text))
        else:
            docs = _read_file(path)
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs or not any(d.text.strip() for d in docs):
        raise ValueError(f"data source {source!r} contains no text")
    return docs


def _rank_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_documents(
    docs: Sequence[Document], val_fraction: float, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """A deterministic train/validation split that depends only on the documents' names.

    The ``round(val_fraction * n)`` documents (at least one) with the smallest hash of
    ``(seed, name)`` are held out, so adding or reordering other files does not move a document
    between splits. A single document is split by text instead: its last ``val_fraction`` (cut at
    a line break) is the validation text.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    docs = list(docs)
    if val_fraction == 0:
        return docs, []
    if len(docs) == 1:
        text = docs[0].text
        cut = int(len(text) * (1 - val_fraction))
        newline = text.rfind("\n", 0, cut)
        cut = newline + 1 if newline > 0 else cut
        return [Document(docs[0].name, text[:cut])], [Document(docs[0].name + "#val", text[cut:])]
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    held = set(sorted(range(len(docs)), key=lambda i: _rank_key(seed, docs[i].name))[:n_val])
    train = [d for i, d in enumerate(docs) if i not in held]
    val = [d for i, d in enumerate(docs) if i in held]
    return train, val


LABELS = ("genre", "folder")
"""The ways to give documents class labels (``--data.labels``)."""


def _genre(doc: Document) -> str | None:
    return GENRES.get(doc.name)


def _folder(doc: Document) -> str | None:
    return doc.name.split("/")[0] if "/" in doc.name else None


def document_labels(
    kind: str, source: str, docs: Sequence[Document]
) -> tuple[tuple[str, ...], Callable[[Document], int]]:
    """The class names of ``kind`` labels and each document's label id (the null label,
    ``len(names)``, for a document without one): ``genre``, the First Folio genre of a play of
    the ``shakespeare`` corpus; ``folder``, a directory source's top-level folder."""
    if kind == "genre" and source != "shakespeare":
        raise ValueError(f"data.labels genre classes the plays of the shakespeare corpus, not "
                         f"{source!r} (folder labels the files of a directory by folder)")
    if kind == "folder" and not Path(source).is_dir():
        raise ValueError(f"data.labels folder needs a directory source, got {source!r}")
    if kind not in LABELS:
        raise ValueError(f"data.labels must be one of {LABELS} or empty, got {kind!r}")
    of = _genre if kind == "genre" else _folder
    names = tuple(sorted({n for n in map(of, docs) if n is not None}))
    if not names:
        raise ValueError(f"data.labels {kind}: no document of {source!r} has a label")
    index = {n: i for i, n in enumerate(names)}
    return names, lambda d: index.get(of(d) or "", len(names))
