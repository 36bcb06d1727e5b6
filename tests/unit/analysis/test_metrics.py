"""Text metrics and memorization on hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_playground.analysis.metrics import (
    bits_per_byte,
    bits_per_token,
    copied_ngrams,
    copy_ngram_size,
    distinct_n,
    longest_repeated_line_run,
    mean_line_length,
    ngram_hashes,
    perplexity,
    repetition_rate,
    summarize,
    text_metrics,
    words,
)


def test_distinct_n_counts_unique_ngrams_over_all() -> None:
    items = words("the cat the cat the dog")  # 6 words
    assert distinct_n(items, 1) == pytest.approx(3 / 6)  # the, cat, dog
    # bigrams: the-cat, cat-the, the-cat, cat-the, the-dog → 3 unique of 5
    assert distinct_n(items, 2) == pytest.approx(3 / 5)
    # trigrams: tct, ctt, tct, ctd → the-cat-the, cat-the-cat, the-cat-the, cat-the-dog: 3 of 4
    assert distinct_n(items, 3) == pytest.approx(3 / 4)


def test_distinct_n_of_text_without_ngrams_is_zero() -> None:
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one", "two"], 3) == 0.0


def test_repetition_rate_is_share_of_repeated_four_grams() -> None:
    assert repetition_rate(words("a b c d e f g")) == 0.0
    # "a b c d a b c d": 5 four-grams, 4 unique (a b c d twice) → 1 - 4/5
    assert repetition_rate(words("a b c d a b c d")) == pytest.approx(0.2)
    assert repetition_rate(words("x " * 20)) == pytest.approx(1 - 1 / 17)


def test_longest_repeated_line_run_skips_blank_lines_and_whitespace() -> None:
    text = "KING.\nGo.\nGo.\n\n  Go.  \nStay.\nStay.\n"
    assert longest_repeated_line_run(text) == 3  # Go. Go. (blank) Go.
    assert longest_repeated_line_run("a\nb\na\nb\n") == 1
    assert longest_repeated_line_run("\n\n") == 0


def test_mean_line_length_ignores_blank_lines() -> None:
    assert mean_line_length("ab\n\nabcd\n") == pytest.approx(3.0)
    assert mean_line_length("") == 0.0


def test_text_metrics_on_a_degenerate_loop() -> None:
    loop = "\n".join(["I will go."] * 10)
    metrics = text_metrics(loop)
    assert metrics["longest_repeated_line_run"] == 10
    assert metrics["distinct_1"] == pytest.approx(3 / 30)
    assert metrics["repetition_rate"] > 0.8
    assert metrics["lines"] == 10
    assert metrics["mean_line_length"] == pytest.approx(10.0)


def test_loss_conversions() -> None:
    assert perplexity(math.log(65)) == pytest.approx(65.0)
    assert perplexity(1e6) == math.inf
    assert bits_per_token(math.log(2)) == pytest.approx(1.0)
    # 10 tokens at ln(4) nats each over 5 bytes: 20 bits / 5 bytes
    assert bits_per_byte(10 * math.log(4), 5) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="byte"):
        bits_per_byte(1.0, 0)


def test_copy_ngram_size_spans_about_32_bytes() -> None:
    assert copy_ngram_size(1.0) == 32  # char model
    assert copy_ngram_size(4.0) == 8  # typical BPE
    assert copy_ngram_size(100.0) == 2  # never below bigrams


def test_ngram_hashes_equal_exactly_for_equal_windows() -> None:
    ids = np.array([5, 0, 7, 5, 0, 7, 5, 0, 8])
    hashes = ngram_hashes(ids, 3)
    assert len(hashes) == 7
    assert hashes[0] == hashes[3]  # 5 0 7 twice
    assert len(set(hashes.tolist())) == 4  # 507, 075, 750, 508
    assert len(ngram_hashes(ids[:2], 3)) == 0
    # id 0 matters: (0, 1) and (1,) shifted must not collide
    assert ngram_hashes(np.array([0, 1]), 2)[0] != ngram_hashes(np.array([1, 1]), 2)[0]


def test_copied_ngrams_finds_verbatim_spans_across_chunks() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50, size=10_000).astype(np.uint16)
    copied = train[4_090:4_110].tolist()  # straddles a chunk boundary at 4096
    novel = (np.arange(20) + 60).tolist()  # ids never in train
    half = train[100:110].tolist() + novel[:10]
    stats = copied_ngrams([copied, novel, half], [train], n=4, chunk_tokens=4_096)
    assert [s.ngrams for s in stats] == [17, 17, 17]
    assert stats[0].fraction == 1.0
    assert stats[1].fraction == 0.0
    # half: 7 windows inside train[100:110], 3 straddling into the novel ids, 7 novel
    assert stats[2].copied == 7
    assert all(s.complete for s in stats)


def test_copied_ngrams_scans_every_shard() -> None:
    first = np.arange(100, dtype=np.uint16)
    second = np.arange(200, 300, dtype=np.uint16)
    stats = copied_ngrams([[250, 251, 252, 253]], [first, second], n=3)
    assert stats[0].fraction == 1.0
    assert stats[0].train_tokens == 200


def test_copied_ngrams_respects_the_scan_budget() -> None:
    train = np.arange(1_000, dtype=np.uint16)
    late = train[900:910].tolist()
    bounded = copied_ngrams([late], [train], n=4, max_scan_tokens=100, chunk_tokens=100)[0]
    assert bounded.copied == 0
    assert not bounded.complete  # the fraction is a lower bound
    assert bounded.scanned_tokens == 100
    full = copied_ngrams([late], [train], n=4, max_scan_tokens=None, chunk_tokens=100)[0]
    assert full.fraction == 1.0


def test_copied_ngrams_of_a_text_shorter_than_n() -> None:
    stats = copied_ngrams([[1, 2]], [np.arange(10)], n=4)[0]
    assert (stats.ngrams, stats.fraction) == (0, 0.0)


def test_summarize_means_numeric_fields() -> None:
    rows = [
        {"a": 1.0, "b": 2, "flag": True, "name": "x"},
        {"a": 3.0, "b": 4, "flag": False, "name": "y"},
    ]
    assert summarize(rows) == {"a": 2.0, "b": 3.0, "flag": 0.5}
    assert summarize([]) == {}
