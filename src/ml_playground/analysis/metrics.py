"""Numbers that describe a language model and the text it writes.

- From a summed cross-entropy: perplexity, bits per token, bits per byte. Bits per byte divides
  the total loss (in bits) by the UTF-8 bytes of the text that was scored, so models with
  different tokenizers (char vs BPE) can be compared: a tokenizer that packs more bytes into a
  token has a higher loss per token, but not per byte.
- From the text alone: distinct-n over words (Li et al. 2016), repetition rate (Welleck et al.
  2019's seq-rep-4), the longest run of one repeated line, mean line length. These catch the
  classic failure of small models: loops that repeat a phrase or a line.
- From the text and the training tokens: the fraction of the text's token n-grams that occur
  verbatim in the training split (memorization). The sample's n-grams are few, the training
  split may be huge, so the split is streamed in bounded chunks and each chunk's n-gram hashes
  are looked up in the sample's small sorted hash table: memory is one chunk, whatever the size
  of the corpus, and `max_scan_tokens` bounds the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2.0)
# n-grams of this many bytes (about six English words) count as "copied" when they occur
# verbatim in the training text; `copy_ngram_size` turns it into tokens for a tokenizer.
COPY_NGRAM_BYTES = 32
DEFAULT_MAX_SCAN_TOKENS = 64 * 1024 * 1024
_CHUNK_TOKENS = 4 * 1024 * 1024
_HASH_BASE = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: odd, so the hash mixes well


# --- from a loss ---------------------------------------------------------------------------------
def perplexity(mean_loss_nats: float) -> float:
    """exp(mean cross-entropy); inf where it would overflow a float (a diverged model)."""
    return math.exp(mean_loss_nats) if mean_loss_nats < 700 else math.inf


def bits_per_token(mean_loss_nats: float) -> float:
    return mean_loss_nats / LN2


def bits_per_byte(total_loss_nats: float, n_bytes: int) -> float:
    """Total loss in bits over the UTF-8 bytes of the scored text."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return total_loss_nats / LN2 / n_bytes


# --- from the text -------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Whitespace-separated words, punctuation kept: what distinct-n is usually computed over."""
    return text.split()


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def distinct_n(items: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams: 1.0 means nothing repeats; 0.0 for text without n-grams."""
    grams = ngrams(items, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(items: Sequence[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier one (seq-rep-n; 0 = no repeats)."""
    grams = ngrams(items, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _content_lines(text: str) -> list[str]:
    """Non-blank lines without surrounding whitespace (blank lines only separate speeches)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def longest_repeated_line_run(text: str) -> int:
    """Length of the longest block of identical consecutive non-blank lines.

    1 when no line repeats the one before it, 0 for text without any non-blank line.
    Blank lines are skipped, so "A\\n\\nA" is a run of 2.
    """
    lines = _content_lines(text)
    best = run = 0
    previous: str | None = None
    for line in lines:
        run = run + 1 if line == previous else 1
        best = max(best, run)
        previous = line
    return best


def mean_line_length(text: str) -> float:
    """Mean characters per non-blank line (0.0 for text without one)."""
    lines = _content_lines(text)
    return sum(len(line) for line in lines) / len(lines) if lines else 0.0


def text_metrics(text: str) -> dict[str, float | int]:
    """Every metric that needs only the text."""
    items = words(text)
    return {
        "distinct_1": distinct_n(items, 1),
        "distinct_2": distinct_n(items, 2),
        "distinct_3": distinct_n(items, 3),
        "repetition_rate": repetition_rate(items, 4),
        "longest_repeated_line_run": longest_repeated_line_run(text),
        "mean_line_length": mean_line_length(text),
        "words": len(items),
        "lines": len(_content_lines(text)),
    }


# --- memorization --------------------------------------------------------------------------------
def copy_ngram_size(bytes_per_token: float, target_bytes: int = COPY_NGRAM_BYTES) -> int:
    """Tokens per n-gram so that an n-gram spans about `target_bytes` of text (at least 2).

    A fixed span in bytes, not in tokens, keeps the memorization rate comparable between a
    char model (32 tokens) and a BPE model (about 8).
    """
    if bytes_per_token <= 0:
        raise ValueError("bytes_per_token must be positive")
    return max(2, round(target_bytes / bytes_per_token))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every window of `n` consecutive ids (len(ids) - n + 1 values).

    uint64 arithmetic wraps silently, which is the modulus we want; collisions between distinct
    n-grams are about as likely as 1 in 2**64 per pair.
    """
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    values = np.asarray(ids).astype(np.uint64) + np.uint64(1)  # so id 0 still counts
    hashes = np.zeros(count, dtype=np.uint64)
    for offset in range(n):
        hashes = hashes * _HASH_BASE + values[offset : offset + count]
    return hashes


@dataclass(frozen=True)
class CopyStats:
    """How many of a text's token n-grams occur verbatim in the training tokens."""

    n: int
    ngrams: int
    copied: int
    scanned_tokens: int
    train_tokens: int

    @property
    def fraction(self) -> float:
        return self.copied / self.ngrams if self.ngrams else 0.0

    @property
    def complete(self) -> bool:
        """False when `max_scan_tokens` stopped the scan early: `fraction` is a lower bound."""
        return self.scanned_tokens >= self.train_tokens


def copied_ngrams(
    samples: Sequence[Sequence[int]],
    train: Iterable[np.ndarray],
    n: int,
    max_scan_tokens: int | None = DEFAULT_MAX_SCAN_TOKENS,
    chunk_tokens: int = _CHUNK_TOKENS,
) -> list[CopyStats]:
    """Per sample: how many of its n-grams (counted with repeats) occur in `train`.

    `train` is the split's token arrays (memmaps are read chunk by chunk, never whole). n-grams
    that straddle two shards are not seen, a negligible loss for shards of millions of tokens.
    The scan stops once every sample n-gram has been found or after `max_scan_tokens`.
    """
    per_sample = [ngram_hashes(np.asarray(ids, dtype=np.int64), n) for ids in samples]
    pooled = np.concatenate([np.empty(0, np.uint64), *per_sample])
    table, inverse = np.unique(pooled, return_inverse=True)
    found = np.zeros(table.size, dtype=bool)
    scanned = total = 0
    for shard in train:
        total += len(shard)
        start = 0
        while table.size and start < len(shard) and not found.all():
            if max_scan_tokens is not None and scanned >= max_scan_tokens:
                break
            piece = np.asarray(shard[start : start + chunk_tokens + n - 1])
            hashes = ngram_hashes(piece, n)
            slots = np.minimum(np.searchsorted(table, hashes), table.size - 1)
            found[slots[table[slots] == hashes]] = True
            covered = min(chunk_tokens, len(shard) - start)
            scanned += covered
            start += covered
    if found.all():  # also when there is nothing to look for
        scanned = total  # nothing left to find: the rest of the split cannot change the answer
    stats = []
    offset = 0
    for hashes in per_sample:
        hits = int(found[inverse[offset : offset + hashes.size]].sum())
        offset += hashes.size
        stats.append(CopyStats(n, int(hashes.size), hits, min(scanned, total), total))
    return stats


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of each numeric metric over several samples."""
    keys = [key for key, value in rows[0].items() if isinstance(value, int | float)] if rows else []
    return {key: sum(float(row[key]) for row in rows) / len(rows) for key in keys}
