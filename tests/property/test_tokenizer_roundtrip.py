from __future__ import annotations

import base64
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from ml_playground.config.schema import DataConfig
from ml_playground.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from ml_playground.errors import DataError

# Any Unicode text Hypothesis can make (surrogates excluded: they are not encodable text).
corpus_texts = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4)
any_text = st.text(max_size=120)


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


# --------------------------------------------------------------------------------------------
# The kinds that encode any text: trained once, then fed arbitrary Unicode.
# --------------------------------------------------------------------------------------------

CORPUS = [
    "Grüße aus Köln! Die Straße ist übermäßig schön, sagte Jürgen. Ärger? Öl? Über alles.\n",
    "def greet(name):\n\tif name:\n\t\treturn f'Hello, {name}!'  # 🙂\n\treturn None\n",
    "日本語のテキストです。中文文本也在这里。\r\nWindows line\r\nanother line\r\n",
    "   leading spaces, trailing spaces   \n\n\nand blank lines 🎉🚀👍🏽\n",
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet "
    "is the sun.\nArise, fair sun, and kill the envious moon.\n",
] * 8 + [f"line {i}: the quick brown fox {i * 7919 % 1000} jumps\n" for i in range(200)]

OPEN_KINDS = ["bpe", "sentencepiece_bpe", "sentencepiece_unigram", "tiktoken"]


def write_ranks_file(path: Path) -> Path:
    """A toy .tiktoken file: the 256 single bytes, then a few merges (base64 token, rank)."""
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b"er", b" a", b"\n\n"]
    lines = [f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n", "ascii")
    return path


@pytest.fixture(scope="module")
def open_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    ranks = write_ranks_file(tmp_path_factory.mktemp("tiktoken") / "toy.tiktoken")
    return {
        "bpe": train_tokenizer(DataConfig(tokenizer="bpe", vocab_size=400), CORPUS),
        "sentencepiece_bpe": train_tokenizer(
            DataConfig(tokenizer="sentencepiece_bpe", vocab_size=400), CORPUS
        ),
        "sentencepiece_unigram": train_tokenizer(
            DataConfig(tokenizer="sentencepiece_unigram", vocab_size=400), CORPUS
        ),
        "tiktoken": train_tokenizer(
            DataConfig(tokenizer="tiktoken", tokenizer_name=str(ranks)), []
        ),
    }


@pytest.fixture(scope="module")
def reloaded_tokenizers(
    open_tokenizers: dict[str, Tokenizer], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Tokenizer]:
    """Each tokenizer saved and loaded back, as sampling and serving see it."""
    root = tmp_path_factory.mktemp("saved")
    loaded = {}
    for kind, tokenizer in open_tokenizers.items():
        tokenizer.save(root / kind)
        loaded[kind] = load_tokenizer(root / kind)
    return loaded


@pytest.mark.parametrize("kind", OPEN_KINDS)
@settings(max_examples=100, deadline=None)
@given(text=any_text)
@example(text="\u2581 \u2581\u2581x")  # SentencePiece's own space symbol, as literal text
@example(text="\x00\r\n\t  \n\n ")
@example(text="<|endoftext|><unk></s>")
@example(text="🙂👍🏽 Grüße 日本語")
def test_any_text_round_trips(kind: str, open_tokenizers: dict[str, Tokenizer], text: str) -> None:
    tokenizer = open_tokenizers[kind]
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.eot_id not in ids
    assert tokenizer.decode(ids) == text


@pytest.fixture(scope="module")
def pickled_tokenizers(open_tokenizers: dict[str, Tokenizer]) -> dict[str, Tokenizer]:
    """Each tokenizer through pickle, as prepare's worker processes receive it."""
    return {kind: pickle.loads(pickle.dumps(tok)) for kind, tok in open_tokenizers.items()}


@pytest.mark.parametrize("kind", OPEN_KINDS)
@settings(max_examples=50, deadline=None)
@given(texts=st.lists(any_text, max_size=4))
def test_save_load_and_pickle_preserve_encoding(
    kind: str,
    open_tokenizers: dict[str, Tokenizer],
    reloaded_tokenizers: dict[str, Tokenizer],
    pickled_tokenizers: dict[str, Tokenizer],
    texts: list[str],
) -> None:
    tokenizer, loaded = open_tokenizers[kind], reloaded_tokenizers[kind]
    assert (loaded.kind, loaded.vocab_size, loaded.eot_id) == (
        tokenizer.kind,
        tokenizer.vocab_size,
        tokenizer.eot_id,
    )
    copy = pickled_tokenizers[kind]
    expected = [tokenizer.encode(text) for text in texts]
    assert [loaded.encode(text) for text in texts] == expected
    assert copy.encode_batch(texts) == expected
    for text, ids in zip(texts, expected, strict=True):
        assert loaded.decode(ids) == text


@pytest.mark.parametrize("kind", OPEN_KINDS)
@settings(max_examples=50, deadline=None)
@given(documents=st.lists(any_text, min_size=1, max_size=4))
def test_documents_joined_with_eot_decode_to_the_joined_text(
    kind: str, open_tokenizers: dict[str, Tokenizer], documents: list[str]
) -> None:
    tokenizer = open_tokenizers[kind]
    eot = tokenizer.eot_id
    assert eot is not None
    ids: list[int] = []
    for i, document in enumerate(documents):
        if i:
            ids.append(eot)
        ids += tokenizer.encode(document)
    assert ids.count(eot) == len(documents) - 1
    assert tokenizer.decode(ids) == "<|endoftext|>".join(documents)
