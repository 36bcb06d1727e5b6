from __future__ import annotations

import base64
import importlib.util
import json
import pickle
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ml_playground.config.schema import DataConfig
from ml_playground.data.tokenizers import (
    EOT,
    METADATA_FILE,
    TOKENIZER_FILE,
    CharTokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from ml_playground.errors import DataError

# --------------------------------------------------------------------------------------------
# A small multilingual corpus: prose, German umlauts, CJK, emoji, code with tabs and CRLF.
# --------------------------------------------------------------------------------------------

FIXED_DOCS = [
    "Grüße aus Köln! Die Straße ist übermäßig schön, sagte Jürgen.\nÄrger? Öl? Über alles.",
    "def greet(name):\n\tif name:\n\t\treturn f'Hello, {name}!'  # 🙂\n\treturn None\n",
    "日本語のテキストです。中文文本也在这里。\r\nWindows line\r\nanother line\r\n",
    "   leading spaces, trailing spaces   \n\n\nand blank lines 🎉🚀👍🏽",
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east.",
]


def make_corpus(seed: int = 0, n_docs: int = 60) -> list[str]:
    """About 20 KB of varied text, deterministic: enough for a few hundred merges."""
    rng = random.Random(seed)
    alphabets = [
        "etaoinshrdlucmfwypvbgkjqxz",
        "äöüßÄÖÜéèçñ",
        "日本語中文文本テキスト",
        "🙂🎉👍🚀",
        "αβγδεζηθ",
        "абвгдежз",
    ]
    docs = list(FIXED_DOCS)
    for _ in range(n_docs):
        lines = []
        for _ in range(rng.randint(3, 12)):
            words = []
            for _ in range(rng.randint(2, 10)):
                alphabet = rng.choice(alphabets) if rng.random() < 0.3 else alphabets[0]
                words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))))
            indent = rng.choice(["", "", "    ", "\t", "  "])
            end = rng.choice(["", ".", ",", "!", "\r", ":", "();"])
            lines.append(indent + " ".join(words) + end)
        docs.append("\n".join(lines))
    return docs


CORPUS = make_corpus()
VOCAB_SIZE = 400

TRICKY_TEXTS = [
    "",
    " ",
    "\n",
    "  two leading spaces",
    "trailing  ",
    "tab\tand\r\nCRLF\n\n",
    "NUL \x00 byte",
    "Ünïcödé Grüße 🙂👍🏽 日本語",
    "literal \u2581 lower one eighth block \u2581\u2581 and a space",
    "<|endoftext|> <unk> <s> </s> <0x41>",
    "\ufeffBOM and \u3000 ideographic space",
    "never seen: ☃ ꙮ 𝄞 \U0010fffd",
]


def write_ranks_file(path: Path) -> Path:
    """A toy .tiktoken file: the 256 single bytes, then a few merges (base64 token, rank)."""
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b"er", b" a", b"\n\n"]
    lines = [f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n", "ascii")
    return path


@pytest.fixture(scope="module")
def ranks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ranks_file(tmp_path_factory.mktemp("tiktoken") / "toy.tiktoken")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level Hugging Face tokenizer as another project would ship it: `<s>`/`</s>`
    specials, a template that adds `<s>`, and `tokenizer_config.json` naming the EOS."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    folder = tmp_path_factory.mktemp("hf")
    backend.save(str(folder / TOKENIZER_FILE))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}), "utf-8")
    return folder


KINDS = ["char", "bpe", "sentencepiece_bpe", "sentencepiece_unigram", "tiktoken", "hf"]


@pytest.fixture(scope="module")
def trained(ranks_file: Path, hf_dir: Path) -> dict[str, Tokenizer]:
    """Every kind, trained (or loaded) once for the whole module."""
    configs = {
        "char": DataConfig(tokenizer="char"),
        "bpe": DataConfig(tokenizer="bpe", vocab_size=VOCAB_SIZE),
        "sentencepiece_bpe": DataConfig(tokenizer="sentencepiece_bpe", vocab_size=VOCAB_SIZE),
        "sentencepiece_unigram": DataConfig(
            tokenizer="sentencepiece_unigram", vocab_size=VOCAB_SIZE
        ),
        "tiktoken": DataConfig(tokenizer="tiktoken", tokenizer_name=str(ranks_file)),
        "hf": DataConfig(tokenizer="hf", tokenizer_name=str(hf_dir)),
    }
    return {kind: train_tokenizer(config, CORPUS) for kind, config in configs.items()}


def texts_for(kind: str) -> list[str]:
    """The texts a kind must round-trip: any text, except char (its trained alphabet only)."""
    return CORPUS[:8] if kind == "char" else [*TRICKY_TEXTS, *CORPUS[:3]]


# --------------------------------------------------------------------------------------------
# char (the original behaviour)
# --------------------------------------------------------------------------------------------


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


def test_char_keeps_its_original_file_format(tmp_path: Path) -> None:
    # Datasets prepared before the other kinds existed have exactly this file and nothing else.
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps({"kind": "char", "chars": ["a", "b"]}))
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.encode("ba") == [1, 0]
    CharTokenizer(["x", "y"]).save(tmp_path / "new")
    assert json.loads((tmp_path / "new" / TOKENIZER_FILE).read_text("utf-8")) == {
        "kind": "char",
        "chars": ["x", "y"],
    }


def test_char_trains_from_a_stream_and_has_no_specials() -> None:
    def stream() -> Iterator[str]:
        yield from ("ab", "bc", "cd")

    tok = train_tokenizer(DataConfig(tokenizer="char"), stream())
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == ["a", "b", "c", "d"]
    assert tok.eot_id is None
    assert tok.special_tokens == {}


def test_loading_from_an_empty_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_duplicate_symbols_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])


def test_unknown_kind_is_rejected() -> None:
    # The config schema rejects it first; a hand-built config still gets a clear error here.
    config = DataConfig.model_construct(tokenizer="wordpiece")
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer(config, ["abc"])


# --------------------------------------------------------------------------------------------
# Every kind: the protocol's promises
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_decode_inverts_encode(trained: dict[str, Tokenizer], kind: str) -> None:
    tok = trained[kind]
    assert tok.kind == kind
    for text in texts_for(kind):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", KINDS)
def test_encode_batch_matches_encode(trained: dict[str, Tokenizer], kind: str) -> None:
    tok = trained[kind]
    texts = texts_for(kind)
    assert tok.encode_batch(texts) == [tok.encode(text) for text in texts]


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_preserve_everything(
    trained: dict[str, Tokenizer], kind: str, tmp_path: Path
) -> None:
    tok = trained[kind]
    tok.save(tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    assert type(loaded) is type(tok)
    assert loaded.kind == kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.eot_id == tok.eot_id
    assert loaded.special_tokens == tok.special_tokens
    for text in texts_for(kind):
        assert loaded.encode(text) == tok.encode(text)
    every_id = list(range(tok.vocab_size))
    assert loaded.decode(every_id) == tok.decode(every_id)


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizers_survive_pickling(trained: dict[str, Tokenizer], kind: str) -> None:
    # prepare hands the tokenizer to worker processes.
    tok = trained[kind]
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.vocab_size == tok.vocab_size
    assert copy.eot_id == tok.eot_id
    for text in texts_for(kind):
        assert copy.encode(text) == tok.encode(text)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "char"])
def test_end_of_text_is_special_and_never_forged_by_text(
    trained: dict[str, Tokenizer], kind: str
) -> None:
    tok = trained[kind]
    eot = tok.eot_id
    assert eot is not None
    assert 0 <= eot < tok.vocab_size
    assert eot in tok.special_tokens.values()
    eot_text = next(text for text, i in tok.special_tokens.items() if i == eot)
    assert eot_text == ("</s>" if kind == "hf" else EOT)
    for text in (f"end{eot_text}start {eot_text}", eot_text, *tok.special_tokens):
        forged = tok.encode(text)
        assert eot not in forged
        assert not set(forged) & set(tok.special_tokens.values())
        assert tok.decode(forged) == text
    # The caller joins documents with eot_id; decoding shows the boundary as text.
    joined = [*tok.encode("one"), eot, *tok.encode("two")]
    assert tok.decode(joined) == f"one{eot_text}two"


# --------------------------------------------------------------------------------------------
# bpe
# --------------------------------------------------------------------------------------------


def test_bpe_has_the_configured_vocab_size_and_compresses(trained: dict[str, Tokenizer]) -> None:
    tok = trained["bpe"]
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.special_tokens == {EOT: tok.eot_id}
    text = CORPUS[10]
    assert len(tok.encode(text)) < 0.8 * len(text.encode())


def test_bpe_saves_standard_hugging_face_files(
    trained: dict[str, Tokenizer], tmp_path: Path
) -> None:
    # The GGUF and HF exporters read vocab and merges from Hugging Face's own layout.
    trained["bpe"].save(tmp_path)
    payload = json.loads((tmp_path / TOKENIZER_FILE).read_text("utf-8"))
    assert payload["model"]["type"] == "BPE"
    vocab = payload["model"]["vocab"]
    assert len(vocab) == VOCAB_SIZE
    assert len(payload["model"]["merges"]) == VOCAB_SIZE - 257
    assert payload["pre_tokenizer"]["type"] == "ByteLevel"
    assert payload["normalizer"] is None
    assert json.loads((tmp_path / METADATA_FILE).read_text("utf-8"))["kind"] == "bpe"
    assert tokenizers.Tokenizer.from_file(str(tmp_path / TOKENIZER_FILE)).get_vocab_size() == (
        VOCAB_SIZE
    )


def test_bpe_rejects_a_vocab_without_room_for_the_bytes() -> None:
    with pytest.raises(DataError, match=r"data.vocab_size=100 .* at least 257"):
        train_tokenizer(DataConfig(tokenizer="bpe", vocab_size=100), CORPUS)


# --------------------------------------------------------------------------------------------
# sentencepiece
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sentencepiece_bpe", "sentencepiece_unigram"])
def test_sentencepiece_layout(trained: dict[str, Tokenizer], kind: str, tmp_path: Path) -> None:
    tok = trained[kind]
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.special_tokens == {"<unk>": 0, EOT: 1}
    assert tok.encode("\n") == [2]  # newlines are a piece of their own, not bytes or dropped
    assert tok.encode("\x00") == [3]  # byte fallback: <0x00> ... <0xFF> follow
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.model").is_file()


@pytest.mark.parametrize("kind", ["sentencepiece_bpe", "sentencepiece_unigram"])
def test_sentencepiece_vocab_too_large_names_the_maximum(kind: str) -> None:
    with pytest.raises(DataError, match=r"data\.vocab_size=5000 is too large .* at most (\d+)"):
        train_tokenizer(DataConfig(tokenizer=kind, vocab_size=5000), CORPUS[:3])


def test_sentencepiece_vocab_too_small_names_the_minimum() -> None:
    with pytest.raises(DataError, match=r"data\.vocab_size=100 is too small .* at least \d+"):
        train_tokenizer(DataConfig(tokenizer="sentencepiece_bpe", vocab_size=100), CORPUS)


def test_sentencepiece_needs_some_text() -> None:
    with pytest.raises(DataError, match="has no text"):
        train_tokenizer(DataConfig(tokenizer="sentencepiece_unigram", vocab_size=300), ["", "\n"])


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece_bpe"])
def test_a_corpus_error_during_training_reaches_the_user(kind: str) -> None:
    # The trainer consumes the corpus stream from C++/Rust; the reader's own error must survive.
    def failing_corpus() -> Iterator[str]:
        yield from CORPUS[:3]
        raise DataError("corpus.txt: invalid UTF-8 at byte 1234")

    with pytest.raises(DataError, match="invalid UTF-8 at byte 1234"):
        train_tokenizer(DataConfig(tokenizer=kind, vocab_size=300), failing_corpus())


# --------------------------------------------------------------------------------------------
# tiktoken
# --------------------------------------------------------------------------------------------


def test_tiktoken_from_a_ranks_file(trained: dict[str, Tokenizer], tmp_path: Path) -> None:
    tok = trained["tiktoken"]
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.vocab_size == 267  # 256 bytes + 10 merges + <|endoftext|>
    assert tok.eot_id == 266
    assert tok.encode(" the") == [260]  # the merges are used
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.tiktoken").read_text("ascii").splitlines()[260] == (
        f"{base64.b64encode(b' the').decode()} 260"
    )


def test_tiktoken_ids_in_a_gap_of_the_vocabulary_decode_as_replacement(tmp_path: Path) -> None:
    # cl100k has unused ids below n_vocab; a model may still sample them.
    ranks = tmp_path / "gappy.tiktoken"
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    lines.append(f"{base64.b64encode(b'ab').decode()} 300")
    ranks.write_text("\n".join(lines) + "\n", "ascii")
    tok = train_tokenizer(DataConfig(tokenizer="tiktoken", tokenizer_name=str(ranks)), [])
    assert (tok.vocab_size, tok.eot_id) == (302, 301)
    assert tok.encode("ab") == [300]
    assert tok.decode([ord("x"), 280, 300]) == "x\ufffdab"


def test_tiktoken_named_encoding_offline_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty cache forces a download; an unreachable proxy makes that fail as it does offline
    # (and fast, also on machines that do have network).
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    config = DataConfig(tokenizer="tiktoken", tokenizer_name="r50k_base")
    with pytest.raises(DataError, match=r"download that is not possible offline.*\.tiktoken"):
        train_tokenizer(config, [])


def test_tiktoken_unknown_name_or_missing_file() -> None:
    with pytest.raises(DataError, match="neither a tiktoken encoding"):
        train_tokenizer(DataConfig(tokenizer="tiktoken", tokenizer_name="gpt7_base"), [])
    with pytest.raises(DataError, match=r"no such \.tiktoken file"):
        train_tokenizer(DataConfig(tokenizer="tiktoken", tokenizer_name="/nope/x.tiktoken"), [])


def test_tiktoken_malformed_ranks_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("this is not base64!! x\n", "ascii")
    with pytest.raises(DataError, match=r"not a \.tiktoken ranks file"):
        train_tokenizer(DataConfig(tokenizer="tiktoken", tokenizer_name=str(bad)), [])


# --------------------------------------------------------------------------------------------
# hf
# --------------------------------------------------------------------------------------------


def test_hf_uses_declared_eos_and_no_bos_template(trained: dict[str, Tokenizer]) -> None:
    tok = trained["hf"]
    assert isinstance(tok, HuggingFaceTokenizer)
    assert tok.eot_id == 1  # "</s>" from tokenizer_config.json
    assert tok.special_tokens == {"<s>": 0, "</s>": 1}
    assert 0 not in tok.encode("hello")  # the `<s> $A` template is not applied


def test_hf_missing_local_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has no tokenizer\.json"):
        train_tokenizer(DataConfig(tokenizer="hf", tokenizer_name=str(tmp_path)), [])
    with pytest.raises(DataError, match="no such file or directory"):
        train_tokenizer(DataConfig(tokenizer="hf", tokenizer_name="./not/here"), [])


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is not None, reason="transformers is installed"
)
def test_hf_hub_id_without_transformers_says_what_to_install() -> None:
    with pytest.raises(DataError, match=r"pip install 'ml_playground\[hf\]'"):
        train_tokenizer(DataConfig(tokenizer="hf", tokenizer_name="gpt2"), [])


def test_a_bare_hugging_face_file_loads_as_hf(hf_dir: Path, tmp_path: Path) -> None:
    (tmp_path / TOKENIZER_FILE).write_bytes((hf_dir / TOKENIZER_FILE).read_bytes())
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "hf"
    assert tok.eot_id == 1  # "</s>" is a known end-of-text spelling
    assert tok.decode(tok.encode("Grüße 🙂")) == "Grüße 🙂"


# --------------------------------------------------------------------------------------------
# Loading broken or foreign folders
# --------------------------------------------------------------------------------------------


def test_unknown_kind_in_a_saved_tokenizer(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text(json.dumps({"kind": "wordpiece"}), "utf-8")
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / METADATA_FILE).unlink()
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps({"kind": "morse"}), "utf-8")
    with pytest.raises(DataError, match="unknown tokenizer kind 'morse'"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("kind", "model_file"),
    [
        ("bpe", "tokenizer.json"),
        ("sentencepiece_unigram", "tokenizer.model"),
        ("tiktoken", "tokenizer.tiktoken"),
    ],
)
def test_a_missing_model_file_is_a_clear_error(
    trained: dict[str, Tokenizer], kind: str, model_file: str, tmp_path: Path
) -> None:
    trained[kind].save(tmp_path)
    (tmp_path / model_file).unlink()
    with pytest.raises(DataError, match=f"{model_file} is missing"):
        load_tokenizer(tmp_path)


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / TOKENIZER_FILE).write_text("{not json", "utf-8")
    with pytest.raises(DataError, match="cannot read the tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps({"something": "else"}), "utf-8")
    with pytest.raises(DataError, match="not a tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"kind": "sentencepiece_bpe"}), "utf-8")
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path)


def test_a_char_tokenizer_saved_over_another_kind_wins(
    trained: dict[str, Tokenizer], tmp_path: Path
) -> None:
    trained["sentencepiece_bpe"].save(tmp_path)
    CharTokenizer(["a", "b"]).save(tmp_path)
    assert load_tokenizer(tmp_path).kind == "char"
