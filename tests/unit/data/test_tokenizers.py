from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.data.tokenizers import CharTokenizer, load_tokenizer, train_tokenizer
from ml_playground.errors import DataError


def test_char_vocab_is_sorted_and_stable() -> None:
    tok = CharTokenizer.train(["hello", "world"])
    assert tok.chars == sorted(set("helloworld"))
    assert tok.vocab_size == 7
    assert tok.encode("hello") == [tok.chars.index(c) for c in "hello"]


def test_round_trip_on_training_text() -> None:
    text = "Ünïcödé: ROMEO.\nWherefore art thou?\t🙂"
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text


def test_unknown_character_is_a_clear_error() -> None:
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(DataError, match="'z' is not in this character vocabulary"):
        tok.encode("abz")


def test_save_and_load_give_the_same_tokenizer(tmp_path: Path) -> None:
    tok = CharTokenizer.train(["Ünïcödé text\n"])
    tok.save(tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    assert isinstance(loaded, CharTokenizer)
    assert loaded.chars == tok.chars


def test_loading_from_an_empty_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_duplicate_symbols_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", ["abc"])
