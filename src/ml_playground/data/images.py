"""Image corpora as token streams: scikit-learn's 8x8 digits and MNIST's IDX files.

Image GPT's point, at toy scale: a GPT that learns text learns images once pixels are tokens.
Each image becomes ``[class token, pixel_0, ..., pixel_{H*W-1}, image-end]`` (row-major,
quantized grey levels; see `PixelTokenizer` for the ids), and the images are concatenated into
one stream that trains exactly like text: random windows of `block_size` tokens, so a window may
start mid-image and the model learns where it is from the last image-end token it saw. The
class token comes first, so a class label as prompt (`sample --prompt 7`) conditions the image.

The train/val split is by whole image, deterministic: MNIST's own t10k files are the validation
set when they are present; otherwise (digits, or MNIST without t10k) a permutation seeded by
`data.seed` holds out `data.val_fraction` of the images.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.config.schema import DataConfig
from ml_playground.errors import DataError

IMAGE_CORPORA = ("digits", "mnist")
DIGITS_SHAPE = (8, 8)
DIGITS_MAX = 16  # load_digits() pixels are counts 0..16 of a 4x4 block of the 32x32 bitmap
MNIST_SHAPE = (28, 28)
MNIST_MAX = 255
NUM_CLASSES = 10
DEFAULT_LEVELS = 17
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type byte → numpy dtype (multi-byte types are big-endian in the format).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class ImageSet:
    """Images (N, H, W) with raw values 0..`max_value`, their labels, and the split."""

    images: np.ndarray
    labels: np.ndarray
    is_val: np.ndarray  # bool per image
    max_value: int
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def is_image_corpus(config: DataConfig) -> bool:
    return config.corpus in IMAGE_CORPORA


def image_shape(corpus: str) -> tuple[int, int]:
    """(height, width) of a corpus' images, known before reading them (the tokenizer needs it)."""
    return DIGITS_SHAPE if corpus == "digits" else MNIST_SHAPE


def pixel_levels(config: DataConfig) -> int:
    return config.pixel_levels or DEFAULT_LEVELS


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; gzip-compressed when the name ends in .gz)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: the header promises {dims} values ({expected} bytes) but "
            f"{len(raw) - header} bytes follow; is the download complete?"
        )
    values: np.ndarray = np.frombuffer(raw, dtype=dtype, offset=header)
    return values.reshape(dims)


def _mnist_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    image_name, label_name = MNIST_FILES[split]
    images_path, labels_path = _mnist_file(folder, image_name), _mnist_file(folder, label_name)
    if images_path is None or labels_path is None:
        return None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{images_path} / {labels_path}: expected N images of HxW and N labels, found "
            f"shapes {images.shape} and {labels.shape}"
        )
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES:
        raise DataError(f"{labels_path}: labels must be 0..{NUM_CLASSES - 1}")
    return images.astype(np.uint8), labels.astype(np.int64)


def load_mnist(config: DataConfig) -> ImageSet:
    """MNIST from `data.path`: train files required, t10k files (the val set) optional."""
    folder = Path(config.path or "").expanduser()
    train = _mnist_split(folder, "train") if folder.is_dir() else None
    if train is None:
        wanted = ", ".join(name for pair in MNIST_FILES.values() for name in pair)
        raise DataError(
            f"data.path={config.path} has no MNIST IDX files; put {wanted} (each optionally "
            f".gz) in that directory (the t10k pair is optional: it becomes the validation set)"
        )
    val = _mnist_split(folder, "val")
    if val is None:
        images, labels = train
        is_val = _split_images(len(images), config)
    else:
        images, labels = np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
        is_val = np.arange(len(images)) >= len(train[0])
    if images.shape[1:] != MNIST_SHAPE:
        raise DataError(f"MNIST images are {MNIST_SHAPE}; {folder} holds {images.shape[1:]}")
    return ImageSet(images, labels, is_val, MNIST_MAX, _fingerprint(images, labels, is_val))


def load_digits_set(config: DataConfig) -> ImageSet:
    """scikit-learn's bundled 1,797 8x8 digits (no download)."""
    try:
        from sklearn.datasets import (  # type: ignore[import-untyped]  # the 'images' extra
            load_digits,
        )
    except ImportError:
        raise DataError(
            "data.corpus='digits' needs scikit-learn: pip install 'ml_playground[images]'"
        ) from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    is_val = _split_images(len(images), config)
    return ImageSet(images, labels, is_val, DIGITS_MAX, _fingerprint(images, labels, is_val))


def load_images(config: DataConfig) -> ImageSet:
    if config.corpus == "digits":
        return load_digits_set(config)
    if config.corpus == "mnist":
        return load_mnist(config)
    raise DataError(f"data.corpus={config.corpus!r} is not an image corpus")


def _split_images(count: int, config: DataConfig) -> np.ndarray:
    """Seeded, whole-image validation set of `val_fraction` (at least one image each side)."""
    take = min(max(round(count * config.val_fraction), 1), count - 1)
    is_val = np.zeros(count, dtype=bool)
    is_val[np.random.default_rng(config.seed).permutation(count)[:take]] = True
    return is_val


def _fingerprint(images: np.ndarray, labels: np.ndarray, is_val: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (images, labels, is_val):
        digest.update(str(array.shape).encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def quantize(images: np.ndarray, max_value: int, levels: int) -> np.ndarray:
    """Raw values 0..max_value → grey levels 0..levels-1 (nearest; identity for digits at 17)."""
    scaled = np.rint(images.astype(np.float64) * ((levels - 1) / max_value))
    return np.clip(scaled, 0, levels - 1).astype(np.int64)


def record_tokens(dataset_info: dict[str, object]) -> int:
    """Tokens per record of a prepared dataset: one image (class + pixels + end), else 1 (text).

    Training windows of an image dataset start on an image's class token, so every window sees
    the class it is asked to draw; text windows may start anywhere.
    """
    shape = dataset_info.get("image_shape")
    if not isinstance(shape, list):
        return 1
    return int(np.prod(shape)) + 2


def image_tokens(levels: np.ndarray, labels: np.ndarray, levels_count: int) -> np.ndarray:
    """(N, H, W) levels + labels → one stream of `[class, pixels..., image-end]` per image.

    Ids follow `PixelTokenizer`: pixels 0..L-1, class c → L + c, image-end → L + 10.
    """
    count = len(levels)
    rows = np.empty((count, levels[0].size + 2), dtype=np.int64)
    rows[:, 0] = levels_count + labels
    rows[:, 1:-1] = levels.reshape(count, -1)
    rows[:, -1] = levels_count + NUM_CLASSES
    return rows.reshape(-1)
