"""Text sources, packing into fixed-length sequences, a deterministic split, a resumable iterator.

Sources: ``examples.sources`` (``read_documents``, re-exported here).

Packing follows the paper's "wrap" mode: each document becomes ``[BOS] ids [EOS]``, documents
are concatenated into one stream, and the stream is cut into rows of ``seq_len`` tokens (the
final partial row is dropped). Sequences therefore cross document boundaries, and BOS/EOS mark
where one ends and the next begins.

Without packing (``packing=False``, ``--data.packing false``; the paper's LM1B "no wrap"
baseline) every row holds one document, ``[BOS] ids [EOS]``, padded to ``seq_len`` with the
pad id (the tokenizer's EOS id; which id fills the padding does not matter, it is masked out),
and a padding mask marks the real tokens (``PaddedRows``; batches come as ``Batch(x_0, mask)``).
A document longer than ``seq_len`` is cut into consecutive rows of ``seq_len`` tokens, the last
one padded: no text is dropped, and ``info["split_documents"]`` counts the documents cut.

Class labels (``labels=``, ``--data.labels``; for classifier-free guidance): ``genre`` gives
each play of the ``shakespeare`` corpus its First Folio genre (``examples.corpus.GENRES``),
``folder`` gives each document of a directory source the name of its top-level folder. Every
row then carries one label (``LabelledRows``; batches come as ``Batch(x_0, mask, label)``):
packed rows are packed per label, so a row spans documents of one label only (each label's
stream loses its last partial row); an unpacked row is its document's. Documents without a
label (the poems, files at the top of the directory) get the null label, id ``len(names)``,
and train the unconditional prediction only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from examples.corpus import Document, default_cache_dir
from examples.rows import Batch, LabelledRows, PaddedRows, Rows, batch_of
from examples.sources import (
    LABELS,
    _hf_documents,
    document_labels,
    read_documents,
    split_documents,
)
from examples.tokenizer import TextTokenizer, build_tokenizer

__all__ = [
    "LABELS",
    "Batch",
    "BatchIterator",
    "LabelledRows",
    "PaddedRows",
    "PreparedData",
    "masked_validation_batches",
    "pack_documents",
    "pad_documents",
    "document_labels",
    "prepare_data",
    "read_documents",
    "split_documents",
    "validation_batches",
]

def _labelled_rows(
    rows_of: Callable[..., Any], docs: Sequence[Document], label_of: Callable[[Document], int],
    names: tuple[str, ...], tok: TextTokenizer, seq_len: int, what: str,
) -> LabelledRows:  # fmt: skip
    """Each label's documents made into rows apart (packed rows never mix labels), joined."""
    parts, labels = [], []
    for label in sorted({label_of(d) for d in docs}):
        group = [d for d in docs if label_of(d) == label]
        try:
            rows = rows_of(group, tok, seq_len, what=what)
        except ValueError:  # too little text of this label for one packed row
            continue
        parts.append(rows)
        labels.append(np.full(len(rows), label, dtype=np.int64))
    if not parts:
        raise ValueError(f"the {what} has too little text of any one label for a sequence of "
                         f"seq_len={seq_len}")  # fmt: skip
    if isinstance(parts[0], PaddedRows):
        joined: Any = PaddedRows(np.concatenate([p.ids for p in parts]),
                                 np.concatenate([p.lengths for p in parts]), parts[0].pad_id,
                                 sum(p.documents for p in parts))  # fmt: skip
    else:
        joined = np.concatenate(parts)
    return LabelledRows(joined, np.concatenate(labels), names)


def token_stream(docs: Iterable[Document], tokenizer: TextTokenizer) -> np.ndarray:
    """All documents as one int32 stream: ``[BOS] doc_0 [EOS] [BOS] doc_1 [EOS] ...``."""
    bos = np.array([tokenizer.bos_id], dtype=np.int32)
    eos = np.array([tokenizer.eos_id], dtype=np.int32)
    parts: list[np.ndarray] = []
    for doc in docs:
        parts += [bos, tokenizer.encode_array(doc.text).astype(np.int32), eos]
    if not parts:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate(parts)


def pack_documents(
    docs: Iterable[Document], tokenizer: TextTokenizer, seq_len: int, *, what: str = "corpus"
) -> np.ndarray:
    """Pack documents into rows of ``seq_len`` tokens, shape (N, seq_len), int32 ("wrap" mode).

    Raises ValueError if the stream is shorter than one sequence.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    stream = token_stream(docs, tokenizer)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(
            f"the {what} has {len(stream)} tokens after tokenisation, fewer than one sequence of "
            f"seq_len={seq_len}; use more text or a shorter --data.seq_len"
        )
    return stream[: n * seq_len].reshape(n, seq_len)


def _document_rows(ids: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """``[BOS] doc [EOS]`` ids cut into consecutive pieces of at most ``seq_len`` tokens."""
    return [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]


def _padded(
    pieces: Sequence[np.ndarray], seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, seq_len) int32 padded with ``pad_id``, lengths (n,) int32) of the pieces."""
    ids = np.full((len(pieces), seq_len), pad_id, dtype=np.int32)
    lengths = np.zeros(len(pieces), dtype=np.int32)
    for i, piece in enumerate(pieces):
        ids[i, : len(piece)] = piece
        lengths[i] = len(piece)
    return ids, lengths


def pad_documents(
    docs: Iterable[Document], tokenizer: TextTokenizer, seq_len: int, *, what: str = "corpus"
) -> PaddedRows:
    """One document per row, ``[BOS] ids [EOS]`` padded to ``seq_len`` with the EOS id; a longer
    document is cut into several rows. Raises ValueError if there is no document."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    pieces: list[np.ndarray] = []
    documents = 0
    for doc in docs:
        pieces += _document_rows(_framed(tokenizer, tokenizer.encode_array(doc.text)), seq_len)
        documents += 1
    if not pieces:
        raise ValueError(f"the {what} holds no document")
    ids, lengths = _padded(pieces, seq_len, tokenizer.eos_id)
    return PaddedRows(ids, lengths, tokenizer.eos_id, documents)


def _framed(tokenizer: TextTokenizer, ids: np.ndarray) -> np.ndarray:
    """``[BOS] ids [EOS]`` as int32."""
    bos, eos = np.array([tokenizer.bos_id], np.int32), np.array([tokenizer.eos_id], np.int32)
    return np.concatenate([bos, ids.astype(np.int32), eos])


@dataclass
class PreparedData:
    """A tokenizer and the splits: packed (N, L) int32 arrays, or ``PaddedRows`` unpacked
    (``LabelledRows`` around either with labels)."""

    tokenizer: TextTokenizer
    train: Rows
    val: Rows
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class names of a labelled run (empty without labels); id len(names) is null."""
        return self.train.names if isinstance(self.train, LabelledRows) else ()


def _pack_to_cache(
    docs: Iterable[Document], tok: TextTokenizer, seq_len: int, cache: Path, key: dict[str, Any],
    what: str,
) -> np.ndarray:  # fmt: skip
    """Tokenise a (possibly huge, streamed) source once into an int32 file and memory-map it.

    The tokens go to ``<digest>.bin`` in chunks of documents; ``<digest>.json`` (its shape) is
    written last and marks the file complete, so an interrupted run starts the file over.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / "packed"
    folder.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = folder / f"{digest}.bin", folder / f"{digest}.json"
    if meta_path.is_file():
        rows = json.loads(meta_path.read_text())["rows"]
        return np.memmap(data_path, dtype=np.int32, mode="r", shape=(rows, seq_len))
    tmp = folder / f"{digest}.tmp{os.getpid()}.bin"
    encode_batch = getattr(tok, "encode_batch", None)
    n_tokens = 0

    def write(texts: list[str], f: Any) -> int:
        arrays = encode_batch(texts) if encode_batch else [tok.encode_array(t) for t in texts]
        parts = []
        for ids in arrays:
            parts += [np.array([tok.bos_id], np.int32), ids.astype(np.int32),
                      np.array([tok.eos_id], np.int32)]  # fmt: skip
        chunk = np.concatenate(parts)
        chunk.tofile(f)
        return len(chunk)

    with open(tmp, "wb") as f:
        texts: list[str] = []
        for doc in docs:
            texts.append(doc.text)
            if len(texts) == 1024:
                n_tokens += write(texts, f)
                texts = []
        if texts:
            n_tokens += write(texts, f)
    rows = n_tokens // seq_len
    if rows == 0:
        tmp.unlink()
        raise ValueError(
            f"the {what} has {n_tokens} tokens after tokenisation, fewer than one sequence of "
            f"seq_len={seq_len}; use more text or a shorter --data.seq_len"
        )
    os.replace(tmp, data_path)
    meta_path.write_text(json.dumps({"rows": rows, "seq_len": seq_len, "key": key}))
    return np.memmap(data_path, dtype=np.int32, mode="r", shape=(rows, seq_len))


def _pad_to_cache(
    docs: Iterable[Document], tok: TextTokenizer, seq_len: int, cache: Path, key: dict[str, Any],
    what: str,
) -> PaddedRows:  # fmt: skip
    """``_pack_to_cache`` for unpacked rows: ids to ``<digest>.bin``, lengths to
    ``<digest>.len.bin``, ``<digest>.json`` last (it marks both complete)."""
    digest = hashlib.sha256(json.dumps({**key, "packing": False}, sort_keys=True).encode())
    stem = digest.hexdigest()[:16]
    folder = cache / "padded"
    folder.mkdir(parents=True, exist_ok=True)
    ids_path, len_path, meta_path = (folder / f"{stem}{ext}" for ext in (".bin", ".len.bin",
                                                                         ".json"))  # fmt: skip

    def open_rows(rows: int, documents: int) -> PaddedRows:
        ids = np.memmap(ids_path, dtype=np.int32, mode="r", shape=(rows, seq_len))
        lengths = np.memmap(len_path, dtype=np.int32, mode="r", shape=(rows,))
        return PaddedRows(ids, lengths, tok.eos_id, documents)

    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return open_rows(meta["rows"], meta["documents"])
    tmp_ids = folder / f"{stem}.tmp{os.getpid()}.bin"
    tmp_len = folder / f"{stem}.tmp{os.getpid()}.len.bin"
    encode_batch = getattr(tok, "encode_batch", None)
    rows = documents = 0

    def write(texts: list[str], f_ids: Any, f_len: Any) -> int:
        arrays = encode_batch(texts) if encode_batch else [tok.encode_array(t) for t in texts]
        pieces = [p for a in arrays for p in _document_rows(_framed(tok, a), seq_len)]
        ids, lengths = _padded(pieces, seq_len, tok.eos_id)
        ids.tofile(f_ids)
        lengths.tofile(f_len)
        return len(pieces)

    with open(tmp_ids, "wb") as f_ids, open(tmp_len, "wb") as f_len:
        texts: list[str] = []
        for doc in docs:
            texts.append(doc.text)
            documents += 1
            if len(texts) == 1024:
                rows += write(texts, f_ids, f_len)
                texts = []
        if texts:
            rows += write(texts, f_ids, f_len)
    if rows == 0:
        tmp_ids.unlink()
        tmp_len.unlink()
        raise ValueError(f"the {what} holds no document")
    os.replace(tmp_ids, ids_path)
    os.replace(tmp_len, len_path)
    meta_path.write_text(json.dumps({"rows": rows, "documents": documents, "seq_len": seq_len,
                                     "key": key}))  # fmt: skip
    return open_rows(rows, documents)


def _rows_info(train: Rows, val: Rows, labels: str) -> dict[str, Any]:
    """``data_info.json``'s counts of labels and padding, for labelled or unpacked rows."""
    info: dict[str, Any] = {}
    if isinstance(train, LabelledRows) and isinstance(val, LabelledRows):
        n = len(train.names) + 1  # the last: the null label
        info.update({
            "labels": labels, "label_names": list(train.names),
            "train_rows_per_label": np.bincount(train.labels, minlength=n).tolist(),
            "val_rows_per_label": np.bincount(val.labels, minlength=n).tolist(),
        })  # fmt: skip
        train_rows, val_rows = train.rows, val.rows
    else:
        train_rows, val_rows = train, val
    if isinstance(train_rows, PaddedRows) and isinstance(val_rows, PaddedRows):
        info.update({
            "pad_id": train_rows.pad_id,
            "train_padded_fraction": train_rows.padded_fraction,
            "val_padded_fraction": val_rows.padded_fraction,
            # rows beyond one per document: documents longer than seq_len were cut
            "train_continuation_rows": len(train_rows) - train_rows.documents,
            "val_continuation_rows": len(val_rows) - val_rows.documents,
        })  # fmt: skip
    return info


def prepare_data(
    source: str,
    *,
    tokenizer: str | TextTokenizer = "char",
    tokenizer_files: Sequence[str] = (),
    seq_len: int = 128,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    max_documents: int | None = None,
    packing: bool = True,
    labels: str = "",
) -> PreparedData:
    """Read, split, tokenise and pack a source (``packing=False``: one padded document per row,
    ``PaddedRows``; ``labels``: a class label per row, ``LabelledRows``; see the module
    docstring).

    Local sources and built-in corpora are held in memory; a ``char`` tokenizer is built from
    their training split only (characters first seen in validation text become UNK).
    ``hf:`` sources are streamed document by document into a token file in the cache
    directory (tokenised once, then memory-mapped); they need a fixed-vocabulary tokenizer.
    """
    if labels and source.startswith("hf:"):
        raise ValueError(f"data.labels {labels!r} needs a local or built-in source, not {source!r}")
    if source.startswith("hf:"):
        if tokenizer == "char":
            raise ValueError(
                f"a char tokenizer is built from the whole training text; for {source!r} use "
                "byte, gpt2-bpe, bert-wordpiece or hub:<name>"
            )
        tok = tokenizer if not isinstance(tokenizer, str) else build_tokenizer(
            tokenizer, files=tuple(tokenizer_files))  # fmt: skip
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = {"source": source, "tokenizer": tok.to_dict(), "seq_len": seq_len,
               "max": max_documents}  # fmt: skip
        splits: dict[str, Rows] = {}
        to_cache = _pack_to_cache if packing else _pad_to_cache
        for split in ("train", "validation"):
            splits[split] = to_cache(
                _hf_documents(source, split, max_documents), tok, seq_len, cache,
                {**key, "split": split}, f"{split} split of {source!r}",
            )  # fmt: skip
        train, val = splits["train"], splits["validation"]
        info: dict[str, Any] = {"source": source}
    else:
        docs = read_documents(source, cache_dir=cache_dir, max_documents=max_documents)
        train_docs, val_docs = split_documents(docs, val_fraction, split_seed)
        if isinstance(tokenizer, str):
            tok = build_tokenizer(
                tokenizer, text=(d.text for d in train_docs), files=tuple(tokenizer_files)
            )
        else:
            tok = tokenizer
        rows_of = pack_documents if packing else pad_documents
        what = f"training split of {source!r}", f"validation split of {source!r}"
        if labels:
            names, label_of = document_labels(labels, source, docs)
            train = _labelled_rows(rows_of, train_docs, label_of, names, tok, seq_len, what[0])
            val = _labelled_rows(rows_of, val_docs, label_of, names, tok, seq_len, what[1])
        else:
            train = rows_of(train_docs, tok, seq_len, what=what[0])
            val = rows_of(val_docs, tok, seq_len, what=what[1])
        info = {"source": source, "train_documents": len(train_docs),
                "val_documents": [d.name for d in val_docs][:50]}  # fmt: skip
    info.update({"train_sequences": int(train.shape[0]), "val_sequences": int(val.shape[0]),
                 "seq_len": seq_len, "vocab_size": tok.vocab_size, "packing": packing})  # fmt: skip
    info.update(_rows_info(train, val, labels))
    return PreparedData(tok, train, val, info)


class BatchIterator:
    """Endless shuffled batches over packed rows (or ``PaddedRows``), resumable from
    ``state_dict()``. ``next(it)`` gives the ids (B, L); ``it.next_batch()`` a ``Batch`` with
    the padding mask as well (None for packed rows).

    Each epoch visits a permutation of the rows drawn from ``(seed, epoch)`` alone, so the
    position (epoch, batches consumed) is the whole state. With data parallelism every rank
    builds the same permutation and takes its own slice of each global batch of
    ``batch_size * world_size`` rows; the incomplete last global batch of an epoch is skipped.
    """

    def __init__(
        self,
        rows: np.ndarray | Tensor | PaddedRows,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.rows = rows
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = len(rows) // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training data has {len(rows)} sequences, fewer than one global batch of "
                f"{self.global_batch} (batch per rank {batch_size} x {world_size} ranks); use "
                "more data, a smaller batch or a shorter sequence length"
            )
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = -1, np.arange(0)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            n = len(self.rows)
            rng = np.random.default_rng([self.seed, self.epoch])
            self._perm = rng.permutation(n) if self.shuffle else np.arange(n)
            self._perm_epoch = self.epoch
        return self._perm

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Tensor:
        return self.next_batch().x_0

    def next_batch(self) -> Batch:
        """The next batch with its padding mask (None for packed rows)."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.global_batch + self.rank * self.batch_size
        ids = self._permutation()[start : start + self.batch_size]
        self.index += 1
        if isinstance(self.rows, (PaddedRows, LabelledRows)):
            return batch_of(self.rows, ids)
        if isinstance(self.rows, np.ndarray):
            return Batch(torch.as_tensor(np.asarray(self.rows[ids]), dtype=torch.long))
        return Batch(self.rows[torch.as_tensor(ids)].long())

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_rows": len(self.rows),
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in (("num_rows", len(self.rows)), ("global_batch", self.global_batch)):
            if state[key] != mine:
                raise ValueError(
                    f"cannot resume the data position: the checkpoint's {key} is {state[key]} but "
                    f"this run has {mine} (the data, its split or the batch size changed)"
                )
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]


def masked_validation_batches(
    rows: Rows, batch_size: int, max_sequences: int | None = None, *, rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:  # fmt: skip
    """The first ``max_sequences`` validation rows in order, in batches with their padding
    masks (None for packed rows), sharded over ranks.

    With several ranks the count is rounded down to a multiple of ``world_size``, so every rank
    runs the same number of batches (FSDP needs the collectives to line up).
    """
    n = len(rows) if max_sequences is None else min(len(rows), max_sequences)
    if world_size > 1:
        n -= n % world_size
    mine = np.arange(rank, n, world_size)
    for start in range(0, len(mine), batch_size):
        yield batch_of(rows, mine[start : start + batch_size])


def validation_batches(
    rows: Rows, batch_size: int, max_sequences: int | None = None, *, rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tensor]:  # fmt: skip
    """``masked_validation_batches``' ids alone (B, L)."""
    for batch in masked_validation_batches(rows, batch_size, max_sequences, rank=rank,
                                           world_size=world_size):  # fmt: skip
        yield batch.x_0
