"""Sample quality: the text metrics plus memorization against a prepared training split.

One `SampleScorer` per dataset; the training loop's sample writer and `evaluate --samples`
both use it, so a sample file's `.metrics.json` and the evaluate table mean the same thing:

    scorer = SampleScorer.for_dataset(dataset_dir(workdir, "shakespeare_char"))
    scorer.score(["ROMEO.\\nWhat say you?"])[0]["copied_ngram_fraction"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.analysis.metrics import (
    DEFAULT_MAX_SCAN_TOKENS,
    copied_ngrams,
    copy_ngram_size,
    text_metrics,
)
from ml_playground.analysis.text_bytes import count_text_bytes
from ml_playground.data.prepare import read_dataset_info, split_files
from ml_playground.data.tokenizers import Tokenizer, load_tokenizer
from ml_playground.errors import DataError

# Tokens decoded to estimate bytes per token for datasets prepared before `train_bytes` existed.
_ESTIMATE_TOKENS = 100_000


@dataclass(frozen=True)
class SampleScorer:
    """Scores generated texts against one prepared dataset's training split."""

    tokenizer: Tokenizer
    train_files: tuple[Path, ...]
    dtype: str
    ngram: int  # tokens per n-gram for the memorization check
    max_scan_tokens: int | None = DEFAULT_MAX_SCAN_TOKENS

    @classmethod
    def for_dataset(
        cls, directory: Path, max_scan_tokens: int | None = DEFAULT_MAX_SCAN_TOKENS
    ) -> SampleScorer:
        info = read_dataset_info(directory)
        if info is None:
            raise DataError(f"no prepared dataset at {directory}; run `ml-playground prepare`")
        tokenizer = load_tokenizer(directory / "tokenizer")
        files = tuple(split_files(directory, info, "train"))
        if info.get("train_bytes") and info.get("train_tokens"):
            bytes_per_token = info["train_bytes"] / info["train_tokens"]
        else:  # an older dataset: measure the first tokens instead
            head = np.asarray(np.memmap(files[0], dtype=np.dtype(info["dtype"]), mode="r"))
            head = head[:_ESTIMATE_TOKENS]
            bytes_per_token = max(count_text_bytes(tokenizer, head), 1) / max(len(head), 1)
        return cls(
            tokenizer, files, info["dtype"], copy_ngram_size(bytes_per_token), max_scan_tokens
        )

    def _train_tokens(self) -> list[np.ndarray]:
        dtype = np.dtype(self.dtype)
        return [np.memmap(path, dtype=dtype, mode="r") for path in self.train_files]

    def score(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: distinct-1/2/3, repetition rate, line stats and the copied n-gram share.

        `copied_ngram_complete` is false when the scan stopped at `max_scan_tokens`; the
        fraction is then a lower bound.
        """
        ids = [self.tokenizer.encode(text) for text in texts]
        copies = copied_ngrams(ids, self._train_tokens(), self.ngram, self.max_scan_tokens)
        rows = []
        for text, token_ids, copy in zip(texts, ids, copies, strict=True):
            row: dict[str, Any] = text_metrics(text)
            row |= {
                "tokens": len(token_ids),
                "copied_ngram_fraction": copy.fraction,
                "copied_ngram_tokens": copy.n,
                "copied_ngram_complete": copy.complete,
            }
            rows.append(row)
        return rows


def sample_metrics_writer(directory: Path, prompt: str) -> Callable[[str], dict[str, Any]]:
    """A `text → metrics` function for the training loop's sample files (prompt left out)."""
    scorer = SampleScorer.for_dataset(directory)

    def metrics(text: str) -> dict[str, Any]:
        return scorer.score([text.removeprefix(prompt)])[0]

    return metrics
