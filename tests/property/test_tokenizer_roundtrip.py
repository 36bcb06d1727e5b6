from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer
from ml_playground.errors import DataError

# Any Unicode text Hypothesis can make (surrogates excluded: they are not encodable text).
corpus_texts = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4)


@st.composite
def corpus_and_text(draw: st.DrawFn) -> tuple[list[str], str]:
    """A training corpus and a text written only with characters the corpus contains."""
    corpus = draw(corpus_texts)
    alphabet = sorted(set("".join(corpus)))
    text = draw(st.text(alphabet=st.sampled_from(alphabet), max_size=80))
    return corpus, text


@settings(max_examples=60, deadline=None)
@given(corpus_and_text())
def test_decode_inverts_encode_over_the_trained_alphabet(case: tuple[list[str], str]) -> None:
    corpus, text = case
    tokenizer = CharTokenizer.train(corpus)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(corpus_texts)
def test_vocabulary_is_exactly_the_distinct_characters(corpus: list[str]) -> None:
    tokenizer = CharTokenizer.train(corpus)
    assert tokenizer.vocab_size == len(set("".join(corpus)))
    assert tokenizer.chars == sorted(tokenizer.chars)
    # Training order does not change the ids.
    assert CharTokenizer.train(corpus[::-1]).chars == tokenizer.chars


@settings(max_examples=40, deadline=None)
@given(corpus_and_text())
def test_save_and_load_preserve_the_encoding(case: tuple[list[str], str]) -> None:
    corpus, text = case
    tokenizer = CharTokenizer.train(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp) / "tokenizer")
        loaded = load_tokenizer(Path(tmp) / "tokenizer")
    assert loaded.kind == "char"
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode(text) == tokenizer.encode(text)
    every_id = list(range(tokenizer.vocab_size))
    assert loaded.decode(every_id) == tokenizer.decode(every_id)


@settings(max_examples=40, deadline=None)
@given(corpus_texts, st.characters(exclude_categories=["Cs"]))
def test_a_character_outside_the_alphabet_is_a_data_error(corpus: list[str], extra: str) -> None:
    tokenizer = CharTokenizer.train(corpus)
    assume(extra not in tokenizer.chars)
    with pytest.raises(DataError, match=r"is not in this character vocabulary"):
        tokenizer.encode(corpus[0] + extra)
