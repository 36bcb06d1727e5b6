"""Image corpora: IDX parsing, quantization, the digits/MNIST → token stream path of `prepare`."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ml_playground.config.schema import DataConfig
from ml_playground.data import pixel_tokenizer, tokenizers
from ml_playground.data.images import image_tokens, load_mnist, quantize, read_idx
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.prepare import prepare_dataset, split_files
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.errors import DataError
from ml_playground.generate.images import grid_shape, image_prompt, parse_image, write_grid


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file as LeCun's format defines it: 0, 0, type byte, ndim, big-endian dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(folder: Path, train: int, val: int, compress: bool = False) -> Path:
    """A tiny MNIST-shaped folder: random 28x28 uint8 images, labels 0..9."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", train), ("t10k", val)):
        if count == 0:
            continue
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_returns_the_array_written(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    name = "x-idx3-ubyte" + (".gz" if compress else "")
    assert np.array_equal(read_idx(write_idx(tmp_path / name, array, compress)), array)


def test_read_idx_reads_big_endian_ints(tmp_path: Path) -> None:
    array = np.array([1, 256, -7], dtype=">i4")
    assert read_idx(write_idx(tmp_path / "ints", array)).tolist() == [1, 256, -7]


def test_read_idx_rejects_a_bad_magic_and_a_truncated_file(tmp_path: Path) -> None:
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    path = write_idx(tmp_path / "short", np.zeros((4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="download complete"):
        read_idx(path)


def test_quantize_is_exact_for_digits_and_spans_the_levels() -> None:
    values = np.arange(17)
    assert quantize(values, 16, 17).tolist() == list(range(17))
    assert quantize(np.array([0, 127, 128, 255]), 255, 2).tolist() == [0, 0, 1, 1]


def test_image_tokens_lays_out_class_pixels_end() -> None:
    levels = np.arange(8).reshape(2, 2, 2)
    tokens = image_tokens(levels, np.array([3, 9]), levels_count=17)
    assert tokens.tolist() == [20, 0, 1, 2, 3, 27, 26, 4, 5, 6, 7, 27]


def test_mnist_uses_t10k_as_validation(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "mnist", train=6, val=4, compress=True)
    images = load_mnist(DataConfig(corpus="mnist", path=str(folder), tokenizer="pixels"))
    assert images.images.shape == (10, 28, 28)
    assert images.is_val.tolist() == [False] * 6 + [True] * 4


def test_mnist_without_files_says_which_files_to_put_where(tmp_path: Path) -> None:
    config = DataConfig(corpus="mnist", path=str(tmp_path), tokenizer="pixels")
    with pytest.raises(DataError) as caught:
        load_mnist(config)
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" in message
    assert "train-labels-idx1-ubyte" in message


def test_config_pairs_image_corpora_with_the_pixel_tokenizer() -> None:
    with pytest.raises(ValidationError, match="tokenizer='pixels'"):
        DataConfig(corpus="digits")
    with pytest.raises(ValidationError, match="image corpus"):
        DataConfig(corpus="shakespeare", tokenizer="pixels")
    with pytest.raises(ValidationError, match=r"mnist' needs data\.path"):
        DataConfig(corpus="mnist", tokenizer="pixels")


def test_pixel_metadata_file_matches_the_tokenizers_module() -> None:
    assert pixel_tokenizer.METADATA_FILE == tokenizers.METADATA_FILE


def test_prepare_digits_splits_by_image_deterministically(tmp_path: Path) -> None:
    config = DataConfig(corpus="digits", tokenizer="pixels", val_fraction=0.1)
    first = prepare_dataset(config, tmp_path / "a", "digits")
    second = prepare_dataset(config, tmp_path / "b", "digits")
    info = first.info
    assert info["documents"] == 1797
    assert info["val_documents"] == 180
    assert info["vocab_size"] == 28
    assert info["train_tokens"] == (1797 - 180) * 66
    tokens = {}
    for split in ("train", "val"):
        paths = split_files(first.directory, info, split)
        tokens[split] = np.fromfile(paths[0], dtype=info["dtype"]).astype(np.int64)
        again = np.fromfile(split_files(second.directory, info, split)[0], dtype=info["dtype"])
        assert np.array_equal(tokens[split], again)
    rows = tokens["val"].reshape(-1, 66)
    assert ((rows[:, 0] >= 17) & (rows[:, 0] < 27)).all()  # a class token first
    assert (rows[:, 1:65] < 17).all()
    assert (rows[:, 65] == 27).all()
    tokenizer = load_tokenizer(first.directory / "tokenizer")
    assert isinstance(tokenizer, PixelTokenizer)
    assert (tokenizer.height, tokenizer.width) == (8, 8)
    assert prepare_dataset(config, tmp_path / "a", "digits").skipped


def test_prepare_mnist_quantizes_to_the_configured_levels(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path / "mnist", train=5, val=3)
    config = DataConfig(corpus="mnist", path=str(folder), tokenizer="pixels", pixel_levels=4)
    result = prepare_dataset(config, tmp_path / "work", "mnist")
    info = json.loads((result.directory / "dataset.json").read_text())
    assert info["vocab_size"] == 4 + 10 + 1
    assert info["image_shape"] == [28, 28]
    val = np.fromfile(split_files(result.directory, info, "val")[0], dtype=info["dtype"])
    assert val.size == 3 * 786
    assert int(val.reshape(3, 786)[:, 1:-1].max()) == 3


def test_write_grid_png_has_the_promised_size(tmp_path: Path) -> None:
    from matplotlib.image import imread

    images = [np.full((8, 8), k % 17) for k in range(13)]
    path = write_grid(images, 17, tmp_path / "grid.png")
    height, width = grid_shape(13, 8, 8)
    assert imread(path).shape[:2] == (height, width)
    assert (height, width) == (2 * 9 * 8 + 8, 10 * 9 * 8 + 8)  # 2 rows, 10 columns, 8x scale


def test_a_class_label_prompt_and_a_short_sample_parse() -> None:
    tokenizer = PixelTokenizer(17, 2, 2)
    assert image_prompt("7") == "\n<7>"
    assert image_prompt("\n") == "\n"
    image, label = parse_image(tokenizer, "\n<7>g1\n")  # stops after 2 of 4 pixels
    assert label == 7
    assert image.tolist() == [[16, 1], [0, 0]]
