"""The `pixels` tokenizer: grey levels, class labels and an image-end token as ids.

Ids (L = `levels`, 10 classes)::

    0 .. L-1        pixel grey level (0 = background)
    L .. L+9        class token "<0>" .. "<9>" (first token of every image)
    L+10            image end (the end-of-text id), text "\\n"

Images are not text, but sampling, serving and checkpoints speak text, so every id has a
one-character (or `<c>`) spelling and `decode`/`encode` round-trip exactly: level k is
`LEVEL_CHARS[k]` (0-9, a-z, A-Z, then Latin letters from U+0100 for up to 256 levels), so a
sampled 8x8 digit prints as ``<3>00a5f...`` and one line per image. Unlike the text kinds, the
image-end token *is* what "\\n" encodes to: the default prompt "\\n" means "a new image".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_playground.errors import DataError

KIND = "pixels"
METADATA_FILE = "ml_playground_tokenizer.json"  # = tokenizers.METADATA_FILE (which imports us)
NUM_CLASSES = 10
MAX_LEVELS = 256
IMAGE_END = "\n"
LEVEL_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" + "".join(
    chr(0x100 + i) for i in range(MAX_LEVELS - 62)
)
_TOKEN = re.compile(r"<(\d+)>|(.)", re.DOTALL)


class PixelTokenizer:
    """Grey-level images of a fixed `height` x `width` with a class token; see the module doc."""

    kind = KIND

    def __init__(self, levels: int, height: int, width: int) -> None:
        if not 2 <= levels <= MAX_LEVELS:
            raise DataError(f"data.pixel_levels={levels}: choose 2..{MAX_LEVELS}")
        self.levels, self.height, self.width = levels, height, width
        self._char_ids = {ch: i for i, ch in enumerate(LEVEL_CHARS[:levels])}
        self._char_ids[IMAGE_END] = self.image_end_id

    @property
    def image_end_id(self) -> int:
        return self.levels + NUM_CLASSES

    @property
    def vocab_size(self) -> int:
        return self.levels + NUM_CLASSES + 1

    @property
    def eot_id(self) -> int | None:
        return self.image_end_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return {IMAGE_END: self.image_end_id}

    @property
    def pixels_per_image(self) -> int:
        return self.height * self.width

    def class_id(self, label: int) -> int:
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"class label {label} is out of range: give 0..{NUM_CLASSES - 1}")
        return self.levels + label

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for match in _TOKEN.finditer(text):
            label, char = match.group(1), match.group(2)
            if label is not None:
                ids.append(self.class_id(int(label)))
            elif char in self._char_ids:
                ids.append(self._char_ids[char])
            else:
                last = LEVEL_CHARS[self.levels - 1]
                raise DataError(
                    f"{char!r} is not a pixel token: a prompt for an image model is a class "
                    f"label like <7>, pixel characters 0..{last} or a newline"
                )
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        parts = []
        for raw in ids:
            i = int(raw)
            if 0 <= i < self.levels:
                parts.append(LEVEL_CHARS[i])
            elif self.levels <= i < self.image_end_id:
                parts.append(f"<{i - self.levels}>")
            elif i == self.image_end_id:
                parts.append(IMAGE_END)
            else:
                raise DataError(
                    f"id {i} is outside the pixel vocabulary (0..{self.vocab_size - 1})"
                )
        return "".join(parts)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": KIND,
            "format_version": 1,
            "levels": self.levels,
            "height": self.height,
            "width": self.width,
            "classes": NUM_CLASSES,
        }
        (directory / METADATA_FILE).write_text(json.dumps(payload, indent=2) + "\n", "utf-8")

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> PixelTokenizer:
        try:
            return cls(int(metadata["levels"]), int(metadata["height"]), int(metadata["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{directory / METADATA_FILE}: bad pixel tokenizer ({exc})") from None
