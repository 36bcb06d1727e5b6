"""Tokenizer behaviour that mutation testing found unpinned (see docs/testing.md).

`test_tokenizers.py` checks round trips and the error paths users hit first. These tests pin
what a round trip on friendly text cannot see: the exact training settings written into a
SentencePiece model, BPE merge rules, the on-disk metadata, how names are told from paths, and
the wording of errors.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import pickle
import random
import sys
from pathlib import Path

import pytest
import sentencepiece as sentencepiece_module
import tiktoken
import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ml_playground.config.schema import DataConfig
from ml_playground.data import tokenizers as tok_module
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.tokenizers import (
    _MAX_SENTENCE_CHARS,
    _R50K_PATTERN,
    EOT,
    FORMAT_VERSION,
    METADATA_FILE,
    SENTENCEPIECE_FILE,
    TIKTOKEN_FILE,
    TOKENIZER_FILE,
    CharTokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    _sentencepiece_error,
    _sentencepiece_lines,
    load_tokenizer,
    train_tokenizer,
    uses_chat_template,
)
from ml_playground.errors import DataError


def corpus(seed: int = 0, docs: int = 60) -> list[str]:
    """About 20 KB of word-like text over a 300-word lexicon: plenty of merges to learn."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(300)]
    return [
        "\n".join(" ".join(rng.choice(lexicon) for _ in range(10)) for _ in range(6))
        for _ in range(docs)
    ]


def write_ranks(path: Path, extra: list[bytes] = (), count: int | None = None) -> Path:  # type: ignore[assignment]
    """A .tiktoken file: the 256 bytes, `extra` merges, or `count` synthetic tokens in all."""
    tokens = [bytes([b]) for b in range(256)] + list(extra)
    if count is not None:
        tokens += [f"t{i}".encode() for i in range(count - len(tokens))]
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n", "ascii")
    return path


def metadata(directory: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((directory / METADATA_FILE).read_text("utf-8"))
    return data


# Function-scoped fixtures on purpose: mutmut maps each mutant to the tests that run its code,
# and a module-scoped fixture's work would count for the first test that used it only.
@pytest.fixture
def sentencepiece() -> dict[str, SentencePieceTokenizer]:
    return {
        kind: SentencePieceTokenizer.train(kind, 300, corpus())
        for kind in ("sentencepiece_bpe", "sentencepiece_unigram")
    }


def hf_backend(
    specials: tuple[str, ...] = ("<s>", "</s>"), template: str | None = None
) -> tokenizers.Tokenizer:
    """A small byte-level BPE with `specials`; `template` e.g. "<s> $A" adds tokens on encode."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus(docs=10), trainer=trainer)
    if template is not None:
        pairs = [(t, backend.token_to_id(t)) for t in specials if t in template]
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=pairs
        )
    return backend


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    """A byte-level HF tokenizer folder with transformers' side files, as a Hub download has."""
    folder = tmp_path / "hf"
    folder.mkdir()
    hf_backend().save(str(folder / TOKENIZER_FILE))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "note": "Grüße"}, ensure_ascii=False), "utf-8"
    )
    return folder


# --- every kind: saving and its metadata -------------------------------------------------------


def test_every_kind_saves_into_a_directory_that_does_not_exist_yet(
    tmp_path: Path, sentencepiece: dict[str, SentencePieceTokenizer], hf_dir: Path
) -> None:
    ranks = write_ranks(tmp_path / "toy.tiktoken", [b"th", b"he"])
    kinds = {
        "char": CharTokenizer.train(corpus()),
        "bpe": HuggingFaceTokenizer.train_bpe(300, corpus()),
        "tiktoken": TiktokenTokenizer.from_ranks_file(ranks),
        "hf": HuggingFaceTokenizer.from_pretrained(str(hf_dir)),
        **sentencepiece,
    }
    for kind, tokenizer in kinds.items():
        target = tmp_path / "deep" / kind / "tokenizer"
        tokenizer.save(target)
        text = corpus()[0][:40]
        assert load_tokenizer(target).encode(text) == tokenizer.encode(text), kind


def test_sentencepiece_metadata_names_its_files_and_format(
    tmp_path: Path, sentencepiece: dict[str, SentencePieceTokenizer]
) -> None:
    for kind, tokenizer in sentencepiece.items():
        tokenizer.save(tmp_path / kind)
        assert metadata(tmp_path / kind) == {
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "model_file": "tokenizer.model",
            "eot": EOT,
        }
        assert (tmp_path / kind / METADATA_FILE).read_text("utf-8").endswith("}\n")


def test_load_follows_the_file_names_the_metadata_gives(
    tmp_path: Path, sentencepiece: dict[str, SentencePieceTokenizer]
) -> None:
    sp = sentencepiece["sentencepiece_bpe"]
    sp.save(tmp_path / "sp")
    (tmp_path / "sp" / "tokenizer.model").rename(tmp_path / "sp" / "custom.model")
    data = metadata(tmp_path / "sp") | {"model_file": "custom.model"}
    (tmp_path / "sp" / METADATA_FILE).write_text(json.dumps(data), "utf-8")
    assert load_tokenizer(tmp_path / "sp").encode("the king") == sp.encode("the king")

    tt = TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "toy.tiktoken", [b"th"]))
    tt.save(tmp_path / "tt")
    (tmp_path / "tt" / "tokenizer.tiktoken").rename(tmp_path / "tt" / "ranks.tiktoken")
    data = metadata(tmp_path / "tt") | {"ranks_file": "ranks.tiktoken"}
    (tmp_path / "tt" / METADATA_FILE).write_text(json.dumps(data), "utf-8")
    assert load_tokenizer(tmp_path / "tt").encode("the") == tt.encode("the")


# --- char --------------------------------------------------------------------------------------


def test_char_with_one_symbol_and_with_none() -> None:
    one = CharTokenizer(["a"])
    assert one.encode("aaa") == [0, 0, 0]
    with pytest.raises(DataError):
        one.encode("ab")
    empty = CharTokenizer([])
    assert empty.encode("") == []
    with pytest.raises(DataError, match="character"):
        empty.encode("x")


def test_char_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^chars must be distinct single characters$"):
        CharTokenizer(["a", "a"])
    with pytest.raises(DataError, match=r"^the text holds an unpaired surrogate at index 2$"):
        CharTokenizer.train(["ab"]).encode("ab\ud800")


@pytest.mark.parametrize(
    ("chars", "message"),
    [
        ("abc", "'chars' must be a list of characters"),
        ([1, 2], "'chars' must be a list of characters"),
        (["a", "a"], "chars must be distinct single characters"),
    ],
)
def test_a_corrupt_char_file_is_a_data_error_naming_the_file(
    tmp_path: Path, chars: object, message: str
) -> None:
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps({"kind": "char", "chars": chars}), "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == f"{tmp_path / TOKENIZER_FILE}: {message}"


def test_a_metadata_file_that_is_not_an_object_names_what_it_found(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text("[1, 2]", "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == f"{tmp_path / METADATA_FILE}: expected a JSON object, found list"


def test_unknown_kinds_list_the_known_ones(tmp_path: Path) -> None:
    known = "char, bpe, sentencepiece_bpe, sentencepiece_unigram, tiktoken, hf, pixels"
    (tmp_path / METADATA_FILE).write_text('{"kind": "wordpiece"}', "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / METADATA_FILE}: unknown tokenizer kind 'wordpiece' (known: {known}); "
        "was it written by a newer ml_playground?"
    )
    (tmp_path / METADATA_FILE).unlink()
    (tmp_path / TOKENIZER_FILE).write_text('{"kind": "wordpiece"}', "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / TOKENIZER_FILE}: unknown tokenizer kind 'wordpiece' (known: {known})"
    )


def test_train_tokenizer_guards_configs_that_skipped_validation() -> None:
    unvalidated = DataConfig.model_construct
    with pytest.raises(DataError, match=r"^data.tokenizer='bpe' needs data.vocab_size \(e.g"):
        train_tokenizer(unvalidated(tokenizer="bpe", vocab_size=None), [])
    with pytest.raises(DataError, match=r"^data.tokenizer='hf' needs data.tokenizer_name$"):
        train_tokenizer(unvalidated(tokenizer="hf", tokenizer_name=None), [])
    with pytest.raises(DataError) as info:
        train_tokenizer(unvalidated(tokenizer="wordpiece"), [])
    assert str(info.value) == (
        "unknown tokenizer kind 'wordpiece'; choose one of char, bpe, sentencepiece_bpe, "
        "sentencepiece_unigram, tiktoken, hf, pixels"
    )


# --- byte-level BPE ----------------------------------------------------------------------------


def test_bpe_has_exactly_the_vocab_size_asked_for() -> None:
    tokenizer = HuggingFaceTokenizer.train_bpe(300, corpus())
    assert tokenizer.vocab_size == 300
    assert tokenizer.kind == "bpe"
    assert tokenizer.eot_id is not None
    assert tokenizer.special_tokens == {EOT: tokenizer.eot_id}


def test_bpe_accepts_the_smallest_vocab_that_holds_the_bytes() -> None:
    tokenizer = HuggingFaceTokenizer.train_bpe(257, corpus())
    assert tokenizer.vocab_size == 257
    assert tokenizer.decode(tokenizer.encode("the king")) == "the king"


def test_bpe_merges_pairs_seen_twice_but_not_once() -> None:
    twice = HuggingFaceTokenizer.train_bpe(1000, ["xyxy"])  # (x,y) twice, (y,x) once
    assert twice.vocab_size == 258
    assert twice.encode("xy") == [twice.backend.token_to_id("xy")]
    once = HuggingFaceTokenizer.train_bpe(1000, ["abcdefgh"])  # every pair once
    assert once.vocab_size == 257


def test_bpe_pieces_never_cross_a_word_boundary() -> None:
    """GPT-2's pre-split: a space ('Ġ') only ever starts a piece, it never sits inside one."""
    tokenizer = HuggingFaceTokenizer.train_bpe(400, corpus())
    pieces = [p for p in tokenizer.backend.get_vocab() if p != EOT]
    assert any(p.startswith("Ġ") and len(p) > 1 for p in pieces)
    assert not [p for p in pieces if "Ġ" in p[1:]]


# --- hf ----------------------------------------------------------------------------------------


def test_hf_end_of_text_must_be_in_the_vocabulary(hf_dir: Path) -> None:
    backend = tokenizers.Tokenizer.from_file(str(hf_dir / TOKENIZER_FILE))
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer("hf", backend, "<eos>")
    assert str(info.value) == "end-of-text token '<eos>' is not in the tokenizer's vocabulary"
    assert HuggingFaceTokenizer("hf", backend, None).eot_id is None


def test_hf_side_files_survive_save_load_and_pickle(hf_dir: Path, tmp_path: Path) -> None:
    original = (hf_dir / "tokenizer_config.json").read_text("utf-8")
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    restored = pickle.loads(pickle.dumps(tokenizer))
    assert restored.kind == "hf"
    restored.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer_config.json").read_text("utf-8") == original
    assert metadata(tmp_path / "saved") == {
        "kind": "hf",
        "format_version": FORMAT_VERSION,
        "tokenizer_file": TOKENIZER_FILE,
        "eot": "</s>",
        "hf_files": ["tokenizer_config.json"],
    }
    again = load_tokenizer(tmp_path / "saved")
    again.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer_config.json").read_text("utf-8") == original


# --- SentencePiece -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model_type"), [("sentencepiece_bpe", "BPE"), ("sentencepiece_unigram", "UNIGRAM")]
)
def test_sentencepiece_is_trained_with_the_round_trip_settings(
    sentencepiece: dict[str, SentencePieceTokenizer], kind: str, model_type: str
) -> None:
    """The settings the class docstring explains, read back from the model itself."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sentencepiece[kind].model_proto)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.ModelType.Value(model_type)
    assert spec.vocab_size == 300
    assert (norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces) == (
        "identity",
        False,
        False,
    )
    assert spec.byte_fallback
    assert list(spec.user_defined_symbols) == ["\n"]
    assert spec.allow_whitespace_only_pieces
    assert spec.max_sentence_length == 4 * _MAX_SENTENCE_CHARS
    assert (spec.unk_id, spec.eos_id, spec.bos_id, spec.pad_id) == (0, 1, -1, -1)
    assert spec.eos_piece == EOT
    assert sentencepiece[kind].kind == kind
    assert pickle.loads(pickle.dumps(sentencepiece[kind])).kind == kind


@pytest.mark.parametrize("kind", ["sentencepiece_bpe", "sentencepiece_unigram"])
def test_sentencepiece_round_trips_what_normalization_would_change(
    sentencepiece: dict[str, SentencePieceTokenizer], kind: str
) -> None:
    tokenizer = sentencepiece[kind]
    for text in [" the  king", "ﬁne Ｋing ①", "a\nb\n\n", "    indented", "king   "]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("\n") == [2]
    assert tokenizer.eot_id == 1


def test_sentencepiece_sees_the_corpus_line_by_line_in_bounded_pieces() -> None:
    long = "x" * (_MAX_SENTENCE_CHARS + 5)
    assert list(_sentencepiece_lines(["a b\nc d", long])) == [
        "a b",
        "c d",
        "x" * _MAX_SENTENCE_CHARS,
        "xxxxx",
    ]


def test_sentencepiece_errors_keep_the_message_after_the_log_prefix() -> None:
    error = _sentencepiece_error("sentencepiece_bpe", 300, "trainer.cc(1) [check] fails] here ")
    assert str(error) == "SentencePiece could not train sentencepiece_bpe: fails] here"
    plain = _sentencepiece_error("sentencepiece_unigram", 300, "no prefix at all")
    assert str(plain) == "SentencePiece could not train sentencepiece_unigram: no prefix at all"


def test_sentencepiece_too_small_vocab_message_explains_the_minimum() -> None:
    message = "Vocabulary size is smaller than required_chars. 300 vs 400."
    error = str(_sentencepiece_error("sentencepiece_bpe", 300, message))
    assert error == (
        "data.vocab_size=300 is too small for sentencepiece_bpe on this text: it needs at least "
        f"400 pieces (256 bytes, <unk>, {EOT}, the newline and the characters that make up "
        "99.95% of the sample); set data.vocab_size to at least 400, or use data.tokenizer=bpe "
        "(byte-level, needs only 257)"
    )


# --- tiktoken ----------------------------------------------------------------------------------


def test_a_ranks_file_named_like_openais_gets_that_encodings_settings(tmp_path: Path) -> None:
    full = TiktokenTokenizer.from_ranks_file(
        write_ranks(tmp_path / "r50k_base.tiktoken", count=50256)
    )
    assert full.encoding.name == "r50k_base"
    assert full.encoding._pat_str == _R50K_PATTERN
    assert full.special_tokens == {EOT: 50256}
    assert full.eot_id == 50256

    # More ranks than r50k has: its special ids would collide, so the generic layout applies.
    (tmp_path / "big").mkdir()
    big = TiktokenTokenizer.from_ranks_file(
        write_ranks(tmp_path / "big" / "r50k_base.tiktoken", count=50300)
    )
    assert big.encoding._pat_str != _R50K_PATTERN
    assert big.special_tokens == {EOT: 50300}


def test_a_ranks_file_keeps_its_stem_as_the_encoding_name(tmp_path: Path) -> None:
    tokenizer = TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "mine.tiktoken"))
    assert tokenizer.encoding.name == "mine"
    tokenizer.save(tmp_path / "saved")
    assert metadata(tmp_path / "saved")["name"] == "mine"
    loaded = load_tokenizer(tmp_path / "saved")
    assert isinstance(loaded, TiktokenTokenizer)
    assert loaded.encoding.name == "mine"
    assert loaded.eot_id == 256


def test_a_tiktoken_encoding_without_end_of_text_has_none_and_keeps_none(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)}
    encoding = tiktoken.Encoding(
        name="plain", pat_str=_R50K_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )
    tokenizer = TiktokenTokenizer(encoding)
    assert tokenizer.eot_id is None
    tokenizer.save(tmp_path)
    assert metadata(tmp_path)["eot"] is None
    loaded = load_tokenizer(tmp_path)
    assert loaded.eot_id is None
    with_eot = tiktoken.Encoding(
        name="eot", pat_str=_R50K_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 256}
    )
    TiktokenTokenizer(with_eot, eot=None).save(tmp_path / "none")
    assert load_tokenizer(tmp_path / "none").eot_id is None


def test_tiktoken_gaps_and_broken_utf8_decode_as_replacement_characters(tmp_path: Path) -> None:
    ranks = tmp_path / "gappy.tiktoken"
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    lines.append(f"{base64.b64encode(b'ab').decode()} 300")
    ranks.write_text("\n".join(lines) + "\n", "ascii")
    tokenizer = TiktokenTokenizer.from_ranks_file(ranks)
    assert tokenizer.decode([280, 0xC3]) == "\ufffd\ufffd"  # a gap id, half of "é"


def test_missing_tiktoken_paths_are_told_from_unknown_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for path_like in ["missing.tiktoken", "sub/missing", "sub\\missing"]:
        with pytest.raises(DataError, match=r"no such \.tiktoken file"):
            TiktokenTokenizer.from_name_or_file(path_like)
    with pytest.raises(DataError) as info:
        TiktokenTokenizer.from_name_or_file("gpt7")
    names = ", ".join(tiktoken.list_encoding_names())
    assert f"is neither a tiktoken encoding ({names}) nor a path" in str(info.value)


def test_a_named_encoding_comes_from_tiktoken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "x.tiktoken")).encoding
    asked: list[str] = []

    def get_encoding(name: str) -> tiktoken.Encoding:
        asked.append(name)
        return fake

    monkeypatch.setattr(tok_module.tiktoken, "get_encoding", get_encoding)
    assert TiktokenTokenizer.from_name_or_file("r50k_base").encoding is fake
    assert asked == ["r50k_base"]


def test_a_failed_download_names_the_error_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> tiktoken.Encoding:
        raise ConnectionRefusedError("no network")

    monkeypatch.setattr(tok_module.tiktoken, "get_encoding", offline)
    with pytest.raises(DataError) as info:
        TiktokenTokenizer.from_name_or_file("cl100k_base")
    message = str(info.value)
    assert "downloading it failed (ConnectionRefusedError)" in message
    assert message.endswith("(or set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's cache)")


def test_an_empty_ranks_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tiktoken"
    empty.write_text("", "ascii")
    with pytest.raises(DataError) as info:
        TiktokenTokenizer.from_ranks_file(empty)
    assert str(info.value) == f"{empty}: the .tiktoken ranks file is empty"


def test_an_incomplete_tiktoken_entry_names_the_metadata_file(tmp_path: Path) -> None:
    TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "x.tiktoken")).save(tmp_path / "t")
    data = metadata(tmp_path / "t")
    del data["pat_str"]
    (tmp_path / "t" / METADATA_FILE).write_text(json.dumps(data), "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path / "t")
    assert str(info.value).startswith(
        f"{tmp_path / 't' / METADATA_FILE}: incomplete tiktoken entry"
    )


# --- hf: what a folder declares ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "bos"),
    [(None, None), ("<s> $A", "<s>"), ("$A </s>", None), ("<s> $A </s>", "<s>")],
)
def test_hf_bos_is_the_special_token_the_template_puts_first(
    template: str | None, bos: str | None
) -> None:
    backend = hf_backend(template=template)
    tokenizer = HuggingFaceTokenizer("hf", backend, "</s>")
    assert tokenizer.bos_id == (None if bos is None else backend.token_to_id(bos))
    assert tokenizer.encode("a") == backend.encode("a", add_special_tokens=False).ids


@pytest.mark.parametrize(
    ("eos_token", "expected"),
    [
        ("<|my_eot|>", "<|my_eot|>"),
        ({"content": "<|my_eot|>", "special": True}, "<|my_eot|>"),
        (None, "</s>"),
        (5, "</s>"),
        ({"special": True}, "</s>"),
    ],
)
def test_hf_end_of_text_is_the_declared_eos_else_a_known_spelling(
    tmp_path: Path, eos_token: object, expected: str
) -> None:
    backend = hf_backend(specials=("<s>", "</s>", "<|my_eot|>"))
    backend.save(str(tmp_path / TOKENIZER_FILE))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}), "utf-8")
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.eot_id == backend.token_to_id(expected)
    (tmp_path / "tokenizer_config.json").unlink()
    assert HuggingFaceTokenizer.from_pretrained(str(tmp_path)).eot_id == backend.token_to_id("</s>")


def test_hf_from_a_tokenizer_json_path_reads_the_files_beside_it(hf_dir: Path) -> None:
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir / TOKENIZER_FILE))
    assert tokenizer.eot_id == tokenizer.backend.token_to_id("</s>")  # from tokenizer_config.json
    assert tokenizer.chat_template is None


@pytest.mark.parametrize(
    "name", ["./nowhere", "/nowhere/tok", "~/nowhere/tok", "\\nowhere\\tok", "tok.json"]
)
def test_hf_a_missing_path_is_not_mistaken_for_a_hub_id(name: str) -> None:
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer.from_pretrained(name)
    assert str(info.value) == f"data.tokenizer_name={name!r}: no such file or directory"


def test_hf_folder_without_tokenizer_json_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer.from_pretrained(str(tmp_path))
    assert str(info.value) == (
        f"{tmp_path} has no {TOKENIZER_FILE}; only 'fast' Hugging Face tokenizers are supported "
        "(load it with transformers and call save_pretrained to write one)"
    )


def test_hf_malformed_tokenizer_json_is_named(tmp_path: Path) -> None:
    (tmp_path / TOKENIZER_FILE).write_text("{}", "utf-8")
    with pytest.raises(DataError, match=r"tokenizer\.json: not a Hugging Face tokenizer\.json \("):
        HuggingFaceTokenizer.from_pretrained(str(tmp_path))
    saved = tmp_path / "saved"
    HuggingFaceTokenizer.train_bpe(257, ["ab"]).save(saved)
    (saved / TOKENIZER_FILE).write_text("{}", "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(saved)
    assert str(info.value).startswith(f"{saved / TOKENIZER_FILE}: not a Hugging Face tokenizer")


def test_hf_load_follows_the_metadata_and_tolerates_older_metadata(
    hf_dir: Path, tmp_path: Path
) -> None:
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    tokenizer.save(tmp_path / "renamed")
    (tmp_path / "renamed" / TOKENIZER_FILE).rename(tmp_path / "renamed" / "tok.json")
    data = metadata(tmp_path / "renamed") | {"tokenizer_file": "tok.json"}
    (tmp_path / "renamed" / METADATA_FILE).write_text(json.dumps(data), "utf-8")
    assert load_tokenizer(tmp_path / "renamed").encode("the") == tokenizer.encode("the")

    tokenizer.save(tmp_path / "old")  # written before `tokenizer_file`/`hf_files` existed
    (tmp_path / "old" / METADATA_FILE).write_text('{"kind": "hf", "eot": "</s>"}', "utf-8")
    old = load_tokenizer(tmp_path / "old")
    assert isinstance(old, HuggingFaceTokenizer)
    assert old.eot_id == tokenizer.eot_id
    old.save(tmp_path / "resaved")
    assert not (tmp_path / "resaved" / "tokenizer_config.json").exists()


def test_hf_unpickles_a_state_from_before_side_files(hf_dir: Path, tmp_path: Path) -> None:
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    state = tokenizer.__getstate__()
    del state["hf_files"]
    restored = HuggingFaceTokenizer.__new__(HuggingFaceTokenizer)
    restored.__setstate__(state)
    restored.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").encode("the") == tokenizer.encode("the")


# --- hf: chat templates ------------------------------------------------------------------------


def test_encode_chat_without_a_template_says_so(hf_dir: Path) -> None:
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    with pytest.raises(DataError) as info:
        tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert str(info.value) == "this tokenizer has no chat template; set data.chat_template=false"


def test_encode_chat_renders_the_template_to_ids(hf_dir: Path) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (hf_dir / "chat_template.jinja").write_text(template, "utf-8")
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    ids = tokenizer.encode_chat([{"role": "user", "content": "the king"}])
    assert ids == tokenizer.encode("user: the king\n")
    assert all(isinstance(i, int) for i in ids)


def test_uses_chat_template_only_for_pairs_and_only_when_allowed(hf_dir: Path) -> None:
    plain = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    (hf_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", "utf-8")
    chat = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    text = DataConfig(tokenizer="hf", tokenizer_name=str(hf_dir))
    pairs = DataConfig(
        corpus="jsonl",
        path="x.jsonl",
        prompt_field="p",
        response_field="r",
        tokenizer="hf",
        tokenizer_name=str(hf_dir),
    )
    assert uses_chat_template(text, chat) is False  # plain text is never templated
    assert uses_chat_template(pairs, chat) is True
    assert uses_chat_template(pairs, plain) is False
    assert uses_chat_template(pairs.model_copy(update={"chat_template": False}), chat) is False
    with pytest.raises(DataError) as info:
        uses_chat_template(pairs.model_copy(update={"chat_template": True}), plain)
    assert str(info.value) == (
        "data.chat_template=true but the tokenizer has no chat template; use a model whose "
        "tokenizer ships one (an instruction-tuned model) or set data.chat_template=false"
    )


# --- pixels, and metadata defaults -------------------------------------------------------------


def test_pixels_are_made_from_the_config_and_load_back(tmp_path: Path) -> None:
    config = DataConfig(corpus="digits", tokenizer="pixels", pixel_levels=5)
    tokenizer = train_tokenizer(config, [])
    assert isinstance(tokenizer, PixelTokenizer)
    assert tokenizer.vocab_size == 5 + 10 + 1  # levels, class tokens, image end
    assert tokenizer.pixels_per_image == 8 * 8
    tokenizer.save(tmp_path / "pixels")
    loaded = load_tokenizer(tmp_path / "pixels")
    assert isinstance(loaded, PixelTokenizer)
    assert (loaded.vocab_size, loaded.pixels_per_image) == (16, 64)


def test_tiktoken_metadata_and_its_default_file_name(tmp_path: Path) -> None:
    tokenizer = TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "toy.tiktoken", [b"th"]))
    tokenizer.save(tmp_path / "saved")
    data = metadata(tmp_path / "saved")
    assert {k: data[k] for k in ("kind", "format_version", "name", "ranks_file", "eot")} == {
        "kind": "tiktoken",
        "format_version": FORMAT_VERSION,
        "name": "toy",
        "ranks_file": TIKTOKEN_FILE,
        "eot": EOT,
    }
    del data["ranks_file"]
    (tmp_path / "saved" / METADATA_FILE).write_text(json.dumps(data), "utf-8")
    assert load_tokenizer(tmp_path / "saved").encode("the") == tokenizer.encode("the")


def test_sentencepiece_metadata_without_a_file_name_uses_the_default(
    tmp_path: Path, sentencepiece: dict[str, SentencePieceTokenizer]
) -> None:
    tokenizer = sentencepiece["sentencepiece_unigram"]
    tokenizer.save(tmp_path)
    assert (tmp_path / SENTENCEPIECE_FILE).is_file()
    (tmp_path / METADATA_FILE).write_text('{"kind": "sentencepiece_unigram"}', "utf-8")
    assert load_tokenizer(tmp_path).encode("the king") == tokenizer.encode("the king")


def test_hf_an_invalid_hub_id_is_a_data_error_naming_it() -> None:
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer.from_pretrained("not a valid id!!")
    assert str(info.value).startswith("cannot load Hugging Face tokenizer 'not a valid id!!': ")


def test_hf_a_hub_tokenizer_without_a_fast_version_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transformers = pytest.importorskip("transformers")

    class SlowOnly:
        """What AutoTokenizer gives for a model with only a slow (Python) tokenizer."""

    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda name: SlowOnly())
    )
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer.from_pretrained("org/slow-model")
    assert str(info.value) == (
        "'org/slow-model' has no fast (tokenizer.json) tokenizer; it is unsupported"
    )


def test_a_failed_sentencepiece_training_names_the_kind() -> None:
    with pytest.raises(DataError) as info:
        SentencePieceTokenizer.train("sentencepiece_unigram", 5000, ["ab ab ab"])
    assert str(info.value).startswith(
        "data.vocab_size=5000 is too large for sentencepiece_unigram on this text"
    )


# --- files on disk are UTF-8, whatever the locale ----------------------------------------------


@pytest.fixture
def cp1252_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text files opened without an explicit encoding get cp1252, as on a Western Windows.

    A checkpoint made on Linux is used on other machines; a file written or read in the locale's
    encoding would break (or silently change) every non-ASCII character there.
    """
    monkeypatch.setattr(io, "text_encoding", lambda encoding, _stacklevel=2: encoding or "cp1252")


DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
"""DeepSeek's end-of-text spelling: full-width bars and '▁', none of them in cp1252."""


@pytest.mark.usefixtures("cp1252_locale")
def test_a_char_vocabulary_is_utf8_on_disk_whatever_the_locale(tmp_path: Path) -> None:
    text = "Grüße, 字 → ▁ and more"
    tokenizer = CharTokenizer.train([text])
    tokenizer.save(tmp_path)
    saved = json.loads((tmp_path / TOKENIZER_FILE).read_bytes().decode("utf-8"))
    assert saved["chars"] == tokenizer.chars
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


@pytest.mark.usefixtures("cp1252_locale")
def test_hf_files_are_utf8_on_disk_whatever_the_locale(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    backend = hf_backend(specials=("<s>", DEEPSEEK_EOS))
    backend.save(str(folder / TOKENIZER_FILE))
    config = json.dumps({"eos_token": DEEPSEEK_EOS, "note": "Grüße"}, ensure_ascii=False)
    (folder / "tokenizer_config.json").write_bytes(config.encode("utf-8"))
    HuggingFaceTokenizer.from_pretrained(str(folder)).save(tmp_path / "saved")
    assert metadata(tmp_path / "saved")["eot"] == DEEPSEEK_EOS
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded.eot_id == backend.token_to_id(DEEPSEEK_EOS)
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer_config.json").read_bytes() == config.encode("utf-8")


# --- loading: odd metadata ---------------------------------------------------------------------


def test_a_corrupt_pixels_entry_names_the_metadata_file(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text('{"kind": "pixels", "levels": 5}', "utf-8")
    with pytest.raises(DataError) as info:
        load_tokenizer(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / METADATA_FILE}: bad pixel tokenizer (")


def test_a_hand_edited_eot_that_is_not_a_string_loads_without_one(
    tmp_path: Path, hf_dir: Path
) -> None:
    kinds = {
        "hf": HuggingFaceTokenizer.from_pretrained(str(hf_dir)),
        "tiktoken": TiktokenTokenizer.from_ranks_file(write_ranks(tmp_path / "toy.tiktoken")),
    }
    for kind, tokenizer in kinds.items():
        tokenizer.save(tmp_path / kind)
        data = metadata(tmp_path / kind) | {"eot": ["</s>", EOT]}
        (tmp_path / kind / METADATA_FILE).write_text(json.dumps(data), "utf-8")
        loaded = load_tokenizer(tmp_path / kind)
        assert loaded.eot_id is None, kind
        assert loaded.encode("the king") == tokenizer.encode("the king"), kind


# --- hf: BOS detection, offsets, chat templates, transformers missing --------------------------


def test_hf_a_tokenizer_that_cannot_spell_a_latin_letter_loads_without_bos(
    tmp_path: Path,
) -> None:
    """A BPE without `<unk>` trained on CJK text encodes "a" (the BOS probe) to no ids at all."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=["</s>"], show_progress=False)
    backend.train_from_iterator(["一二三 四五 一二 三四 五六"] * 5, trainer=trainer)
    backend.save(str(tmp_path / TOKENIZER_FILE))
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.bos_id is None
    assert tokenizer.eot_id == backend.token_to_id("</s>")
    assert tokenizer.encode("一二 三四") == backend.encode("一二 三四").ids != []


def test_saved_bpe_maps_every_token_to_its_exact_span_of_the_text(tmp_path: Path) -> None:
    """As GPT-2's tokenizer.json does: spans keep their leading space, so they tile the text
    (what `return_offsets_mapping` users of an exported tokenizer get)."""
    HuggingFaceTokenizer.train_bpe(300, corpus()).save(tmp_path)
    text = corpus()[0][:300]
    offsets = tokenizers.Tokenizer.from_file(str(tmp_path / TOKENIZER_FILE)).encode(text).offsets
    assert offsets[0][0] == 0
    assert offsets[-1][1] == len(text)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(offsets))


def test_encode_chat_can_open_the_assistant_turn(hf_dir: Path) -> None:
    """What a prompt looks like at inference: the conversation, then the assistant's header."""
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (hf_dir / "chat_template.jinja").write_text(template, "utf-8")
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    prompt = [{"role": "user", "content": "the king"}]
    assert tokenizer.encode_chat(prompt) == tokenizer.encode("user: the king\n")
    opened = tokenizer.encode_chat(prompt, add_generation_prompt=True)
    assert opened == tokenizer.encode("user: the king\nassistant:")


def test_a_chat_template_that_refuses_a_conversation_is_a_data_error(hf_dir: Path) -> None:
    template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'model'] %}"
        "{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    (hf_dir / "chat_template.jinja").write_text(template, "utf-8")
    tokenizer = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    pair = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(DataError) as info:
        tokenizer.encode_chat(pair)
    assert str(info.value) == "the chat template cannot format this pair: Unknown role: assistant"
    with pytest.raises(DataError) as info:
        tokenizer.encode_chat([])
    assert str(info.value).startswith("the chat template cannot format this pair: ")


def test_without_transformers_hub_ids_and_chat_templates_say_what_to_install(
    hf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (hf_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", "utf-8")
    chat = HuggingFaceTokenizer.from_pretrained(str(hf_dir))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(DataError) as info:
        HuggingFaceTokenizer.from_pretrained("org/model")
    assert str(info.value) == (
        "data.tokenizer_name='org/model' looks like a Hugging Face Hub id, which needs "
        "transformers: pip install 'ml_playground[hf]' (or point it at a local folder with a "
        "tokenizer.json)"
    )
    with pytest.raises(DataError) as info:
        chat.encode_chat([{"role": "user", "content": "hi"}])
    assert str(info.value) == (
        "chat templates need transformers: pip install 'ml_playground[hf]' (or set "
        "data.chat_template=false)"
    )


# --- SentencePiece: batches and a quiet trainer ------------------------------------------------


def test_sentencepiece_batches_in_which_every_text_holds_the_space_symbol(
    sentencepiece: dict[str, SentencePieceTokenizer],
) -> None:
    texts = ["a\u2581b", "\u2581the king\u2581"]
    for kind, tokenizer in sentencepiece.items():
        ids = tokenizer.encode_batch(texts)
        assert ids == [tokenizer.encode(text) for text in texts], kind
        assert [tokenizer.decode(i) for i in ids] == texts, kind


def test_sentencepiece_training_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """SentencePiece logs every training step to stderr unless told not to; `prepare` shows its
    own progress instead."""
    # The log level is process-wide: a fresh process starts at 0 (everything), but an earlier
    # training in this one has lowered it already. Start from a fresh process's level.
    sentencepiece_module.set_min_log_level(0)
    SentencePieceTokenizer.train("sentencepiece_unigram", 300, corpus())
    assert capfd.readouterr() == ("", "")
