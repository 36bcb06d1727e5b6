"""`data.split = "tail"`: the last val_fraction of the corpus is validation (nanoGPT's split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import build_manifest, read_unit
from ml_playground.data.prepare import dataset_settings, prepare_dataset, split_corpus_tail
from ml_playground.data.tokenizers import load_tokenizer


def tokens(directory: Path, split: str) -> list[int]:
    return np.fromfile(directory / f"{split}.bin", dtype=np.uint16).tolist()


def test_a_single_file_splits_exactly_as_nanogpt(corpus_file: Path, workdir: Path) -> None:
    config = DataConfig(corpus="file", path=str(corpus_file), split="tail")
    result = prepare_dataset(config, workdir, "tail")
    text = corpus_file.read_text("utf-8")
    n = len(text)
    # nanoGPT's data/shakespeare_char/prepare.py, verbatim in effect:
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    train_ids = [stoi[c] for c in text[: int(n * 0.9)]]
    val_ids = [stoi[c] for c in text[int(n * 0.9) :]]

    tokenizer = load_tokenizer(result.directory / "tokenizer")
    assert tokenizer.vocab_size == len(chars)
    assert tokens(result.directory, "train") == train_ids
    separator = tokenizer.encode("\n\n")
    assert tokens(result.directory, "val") == val_ids + separator  # every document ends so
    assert result.info["split"] == "corpus_tail"


def test_the_cut_falls_inside_one_unit_of_a_chunked_corpus(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i} of the corpus\n" for i in range(400)), "utf-8")
    config = DataConfig(corpus="file", path=str(path), split="tail", val_fraction=0.25)
    manifest = build_manifest(config, chunk_bytes=1000)
    assert manifest.num_units > 5

    pieces, is_val = split_corpus_tail(manifest, config.val_fraction)
    assert pieces.num_units == manifest.num_units + 1
    assert pieces.total_bytes == manifest.total_bytes
    texts = [
        read_unit(pieces.files[0], pieces.names[0], int(s), int(n), False, config)
        for s, n in zip(pieces.start, pieces.length, strict=True)
    ]
    text = path.read_text("utf-8")
    cut = int(len(text) * 0.75)
    assert "".join(t for t, v in zip(texts, is_val, strict=True) if not v) == text[:cut]
    assert "".join(t for t, v in zip(texts, is_val, strict=True) if v) == text[cut:]
    # Only the file's last piece ends a document: no separator lands inside the text.
    assert pieces.ends_document.tolist() == [False] * (pieces.num_units - 1) + [True]


def test_a_cut_inside_a_multibyte_character_moves_to_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "umlaut.txt"
    path.write_text("ä" * 50, "utf-8")  # 100 bytes, two per character
    config = DataConfig(corpus="file", path=str(path), split="tail", val_fraction=0.105)
    manifest = build_manifest(config)
    pieces, is_val = split_corpus_tail(manifest, config.val_fraction)  # cut at byte 89
    assert pieces.length.tolist() == [90, 10]
    assert is_val.tolist() == [False, True]


def test_documents_keep_their_order_and_the_tail_is_validation(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 10, "utf-8")
    config = DataConfig(corpus="dir", path=str(folder), split="tail")
    manifest = build_manifest(config)
    _, is_val = split_corpus_tail(manifest, 0.1)
    # The held-out units are a suffix: everything from the cut on.
    first_val = int(np.argmax(is_val))
    assert is_val[first_val:].all()
    assert not is_val[:first_val].any()
    result = prepare_dataset(config, tmp_path / "work", "docs")
    info = json.loads((result.directory / "dataset.json").read_text("utf-8"))
    assert info["val_tokens"] == pytest.approx(0.1 * info["source_bytes"], abs=25)


def test_documents_mode_splits_whole_units_even_when_few(tmp_path: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        (folder / f"d{i}.txt").write_text(f"text {i}\n" * 20, "utf-8")
    auto = prepare_dataset(DataConfig(corpus="dir", path=str(folder)), tmp_path / "a", "few")
    assert auto.info["split"] == "tail"  # too few units for auto's document split
    whole = prepare_dataset(
        DataConfig(corpus="dir", path=str(folder), split="documents"), tmp_path / "b", "few"
    )
    assert whole.info["split"] == "document"
    assert whole.info["val_documents"] == 1


def test_split_auto_leaves_older_datasets_valid() -> None:
    """Datasets prepared before `split` existed have no such setting: auto must not ask for it."""
    assert "split" not in dataset_settings(DataConfig())
    assert dataset_settings(DataConfig(split="tail"))["split"] == "tail"
