from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import Document
from ml_playground.data.prepare import (
    prepare_dataset,
    require_dataset,
    split_documents,
    token_dtype,
)
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.errors import DataError


def file_config(path: Path, **extra: object) -> DataConfig:
    return DataConfig(corpus="file", path=str(path), **extra)  # type: ignore[arg-type]


def test_prepare_writes_shards_tokenizer_and_info(corpus_file: Path, workdir: Path) -> None:
    result = prepare_dataset(file_config(corpus_file), workdir, "tiny")
    assert not result.skipped
    info = json.loads((result.directory / "dataset.json").read_text())
    text = corpus_file.read_text("utf-8")
    assert info["train_tokens"] + info["val_tokens"] == len(text)
    assert info["dtype"] == "uint16"
    train = np.fromfile(result.directory / "train.bin", dtype=np.uint16)
    val = np.fromfile(result.directory / "val.bin", dtype=np.uint16)
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    # One document: the head is train, the tail is val, and together they are the whole text.
    assert tokenizer.decode(train.tolist()) + tokenizer.decode(val.tolist()) == text
    assert len(val) == pytest.approx(0.1 * len(text), abs=1)


def test_unchanged_source_skips_and_force_redoes(corpus_file: Path, workdir: Path) -> None:
    first = prepare_dataset(file_config(corpus_file), workdir, "tiny")
    marker = first.directory / "train.bin"
    mtime = marker.stat().st_mtime_ns
    assert prepare_dataset(file_config(corpus_file), workdir, "tiny").skipped
    assert marker.stat().st_mtime_ns == mtime
    assert not prepare_dataset(file_config(corpus_file), workdir, "tiny", force=True).skipped


def test_changed_source_or_settings_redo(corpus_file: Path, workdir: Path) -> None:
    prepare_dataset(file_config(corpus_file), workdir, "tiny")
    corpus_file.write_text(corpus_file.read_text() + "\nNEW LINE.\n", encoding="utf-8")
    assert not prepare_dataset(file_config(corpus_file), workdir, "tiny").skipped
    assert not prepare_dataset(file_config(corpus_file, val_fraction=0.2), workdir, "tiny").skipped


def test_no_staging_left_behind(corpus_file: Path, workdir: Path) -> None:
    prepare_dataset(file_config(corpus_file), workdir, "tiny")
    prepare_dataset(file_config(corpus_file), workdir, "tiny", force=True)
    assert sorted(p.name for p in (workdir / "datasets").iterdir()) == ["tiny"]


def test_many_documents_split_by_whole_document() -> None:
    docs = [Document(f"d{i}", f"document {i} " * 10) for i in range(20)]
    train, val = split_documents(docs, 0.1, seed=1)
    assert len(train) + len(val) == 20
    assert set(train).isdisjoint(val)
    assert 2 <= len(val) <= 3
    assert split_documents(docs, 0.1, seed=1) == (train, val)  # deterministic
    assert split_documents(docs, 0.1, seed=2) != (train, val)  # seeded


def test_directory_corpus_reads_txt_files_recursively(tmp_path: Path, workdir: Path) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Sehr geehrte Damen und Herren, Bürger!\n" * 20, encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Größe und Übermut.\n" * 20, encoding="utf-8")
    (folder / "ignored.md").write_text("not text", encoding="utf-8")
    result = prepare_dataset(DataConfig(corpus="dir", path=str(folder)), workdir, "de")
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    assert "ü" in tokenizer.decode(list(range(tokenizer.vocab_size)))
    assert result.info["documents"] == 2


def test_non_utf8_input_names_file_and_offset(tmp_path: Path, workdir: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc" + "é".encode("latin-1") + b"xyz")
    with pytest.raises(DataError, match=r"latin1.txt is not valid UTF-8 at byte offset 3"):
        prepare_dataset(file_config(bad), workdir, "bad")


def test_missing_inputs_are_clear_errors(tmp_path: Path, workdir: Path) -> None:
    with pytest.raises(DataError, match=r"is not a file"):
        prepare_dataset(file_config(tmp_path / "nope.txt"), workdir, "x")
    with pytest.raises(DataError, match=r"is not a directory"):
        prepare_dataset(DataConfig(corpus="dir", path=str(tmp_path / "nope")), workdir, "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no .txt files"):
        prepare_dataset(DataConfig(corpus="dir", path=str(tmp_path / "empty")), workdir, "x")


def test_require_dataset_names_the_command(workdir: Path) -> None:
    with pytest.raises(DataError, match=r"run `ml-playground prepare tiny`"):
        require_dataset(workdir, "tiny")


def test_token_dtype_widens_past_uint16() -> None:
    assert token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32
