from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.config.schema import DataConfig
from ml_playground.data.loader import TokenBatches
from ml_playground.data.prepare import (
    prepare_dataset,
    require_dataset,
    split_files,
    split_units,
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
    assert info["dtype"] == "uint16"
    assert info["split"] == "tail"
    train = np.fromfile(result.directory / "train.bin", dtype=np.uint16)
    val = np.fromfile(result.directory / "val.bin", dtype=np.uint16)
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    # One document: the head is train, the tail is val, each closed by the separator.
    train_text, val_text = tokenizer.decode(train.tolist()), tokenizer.decode(val.tolist())
    assert train_text.endswith("\n\n")
    assert val_text.endswith("\n\n")
    assert train_text[:-2] + val_text[:-2] == text
    assert len(val_text) - 2 == pytest.approx(0.1 * len(text), abs=1)
    assert info["train_tokens"] == len(train)
    assert info["val_tokens"] == len(val)


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


def test_many_units_split_by_whole_unit() -> None:
    lengths = np.full(20, 100, dtype=np.int64)
    is_val, tail = split_units(lengths, 0.1, seed=1)
    assert not tail
    assert int(is_val.sum()) == 2
    again, _ = split_units(lengths, 0.1, seed=1)
    assert np.array_equal(again, is_val)  # deterministic
    other, _ = split_units(lengths, 0.1, seed=2)
    assert not np.array_equal(other, is_val)  # seeded


def test_few_units_fall_back_to_tail_split() -> None:
    is_val, tail = split_units(np.array([500, 700]), 0.1, seed=0)
    assert tail
    assert not is_val.any()


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
    with pytest.raises(DataError, match=r"no files matching '\*\.txt'"):
        prepare_dataset(DataConfig(corpus="dir", path=str(tmp_path / "empty")), workdir, "x")


def test_require_dataset_names_the_command(workdir: Path) -> None:
    with pytest.raises(DataError, match=r"run `ml-playground prepare tiny`"):
        require_dataset(workdir, "tiny")


def test_token_dtype_widens_past_uint16() -> None:
    assert token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32


def write_documents(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        body = f"Dokument {index}: Grüße aus Köln, Straße Nr. {index}.\n" * (5 + index % 7)
        # No trailing newline, so the "\n\n" separator splits documents unambiguously.
        (folder / f"doc{index:03d}.txt").write_text(body.rstrip("\n"), encoding="utf-8")
    return folder


def test_document_split_keeps_documents_whole(tmp_path: Path, workdir: Path) -> None:
    folder = write_documents(tmp_path / "docs", 30)
    result = prepare_dataset(DataConfig(corpus="dir", path=str(folder)), workdir, "docs")
    info = result.info
    assert info["split"] == "document"
    assert info["documents"] == 30
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    val_text = tokenizer.decode(np.fromfile(result.directory / "val.bin", np.uint16).tolist())
    originals = {p.read_text("utf-8") for p in folder.iterdir()}
    val_docs = [doc for doc in val_text.split("\n\n") if doc]
    assert len(val_docs) == info["val_documents"] >= 1
    assert all(doc in originals for doc in val_docs)


def test_parallel_encoding_writes_the_same_tokens(tmp_path: Path, workdir: Path) -> None:
    folder = write_documents(tmp_path / "docs", 40)
    one = prepare_dataset(
        DataConfig(corpus="dir", path=str(folder), num_workers=1), workdir / "a", "docs"
    )
    two = prepare_dataset(
        DataConfig(corpus="dir", path=str(folder), num_workers=2), workdir / "b", "docs"
    )
    for name in ("train.bin", "val.bin"):
        assert (one.directory / name).read_bytes() == (two.directory / name).read_bytes()


def test_small_shards_are_written_and_loaded(tmp_path: Path, workdir: Path) -> None:
    folder = write_documents(tmp_path / "docs", 40)
    config = DataConfig(corpus="dir", path=str(folder), shard_tokens=1000)
    result = prepare_dataset(config, workdir, "docs")
    files = split_files(result.directory, result.info, "train")
    assert len(files) > 1
    assert all(f.name.startswith("train-") for f in files)
    sizes = [f.stat().st_size // 2 for f in files]
    assert sum(sizes) == result.info["train_tokens"]
    assert max(sizes) <= 1000
    batches = TokenBatches(files, "uint16", 16, 64, torch.device("cpu"), seed=0)
    x, y = batches.next_batch()
    assert x.shape == (64, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_jsonl_corpus_reads_the_text_field(tmp_path: Path, workdir: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [{"id": i, "body": f"Zeile {i}: Äpfel und Birnen.\n" * 3} for i in range(25)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    config = DataConfig(corpus="jsonl", path=str(path), text_field="body")
    result = prepare_dataset(config, workdir, "rows")
    assert result.info["documents"] == 25
    with pytest.raises(DataError, match=r"no string field 'text'"):
        prepare_dataset(DataConfig(corpus="jsonl", path=str(path)), workdir, "rows2")


def test_invalid_json_line_is_named(tmp_path: Path, workdir: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', "utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl: the line at byte offset 15 is not valid"):
        prepare_dataset(DataConfig(corpus="jsonl", path=str(path)), workdir, "j")


def test_errors_replace_accepts_bad_bytes(tmp_path: Path, workdir: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes((b"abc" + "é".encode("latin-1") + b"xyz\n") * 50)
    result = prepare_dataset(file_config(bad, errors="replace"), workdir, "bad")
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    assert "\ufffd" in tokenizer.decode(list(range(tokenizer.vocab_size)))


def test_settings_mismatch_and_old_format_are_named(corpus_file: Path, workdir: Path) -> None:
    result = prepare_dataset(file_config(corpus_file), workdir, "tiny")
    info_path = result.directory / "dataset.json"
    info = json.loads(info_path.read_text())
    info["format_version"] = 1
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"older version.*prepare tiny --force"):
        require_dataset(workdir, "tiny")
