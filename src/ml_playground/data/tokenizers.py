"""Tokenizers behind one small protocol, saved as JSON under a dataset's `tokenizer/`.

A checkpoint copies that folder, so sampling and serving need nothing but the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ml_playground.errors import DataError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    """What the rest of the package needs from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


class CharTokenizer:
    """One token per Unicode code point seen in the training corpus (sorted, so ids are stable)."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        self._stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Sequence[str]) -> CharTokenizer:
        vocab: set[str] = set()
        for text in texts:
            vocab.update(text)
        return cls(sorted(vocab))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[ch] for ch in text]
        except KeyError as exc:
            raise DataError(
                f"character {exc.args[0]!r} is not in this character vocabulary "
                f"({self.vocab_size} symbols seen in the training corpus)"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"kind": self.kind, "chars": self.chars}
        (directory / TOKENIZER_FILE).write_text(json.dumps(payload, ensure_ascii=False), "utf-8")


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load whatever tokenizer `save` wrote into `directory`."""
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer at {path}")
    payload = json.loads(path.read_text("utf-8"))
    if payload.get("kind") == "char":
        return CharTokenizer(payload["chars"])
    raise DataError(f"{path}: unknown tokenizer kind {payload.get('kind')!r}")


def train_tokenizer(kind: str, texts: Sequence[str]) -> Tokenizer:
    """Fit the configured tokenizer on the training texts."""
    if kind == "char":
        return CharTokenizer.train(texts)
    raise DataError(f"unknown tokenizer kind {kind!r}")
