"""`prepare`: corpus → tokenizer + train/val token shards + `dataset.json`, atomically.

The dataset directory is built next to its final place and renamed into it, so a crash leaves
either the old dataset or the new one, never half of each. Re-running with the same corpus and
the same settings is a no-op unless `force` is set.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import Document, corpus_fingerprint, iter_documents
from ml_playground.data.tokenizers import Tokenizer, train_tokenizer
from ml_playground.errors import DataError
from ml_playground.fsutil import replace_dir

FORMAT_VERSION = 1
DOCUMENT_SEPARATOR = "\n\n"
# Below this many documents a whole-document split is too coarse; split each document's tail.
MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT = 10


@dataclass(frozen=True)
class PrepareResult:
    directory: Path
    info: dict[str, Any]
    skipped: bool


def dataset_dir(workdir: Path, experiment: str) -> Path:
    return workdir / "datasets" / experiment


def token_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    """uint16 while every id fits, else uint32: half the disk and memory for small vocabularies."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def split_documents(
    documents: list[Document], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: whole documents when there are enough, else each tail.

    With many documents, a seeded shuffle picks whole documents for validation until they hold
    `val_fraction` of the characters, so validation text is unseen in style as well as content.
    With few (a single file), the last `val_fraction` of each document is held out, as nanoGPT does.
    """
    if len(documents) >= MIN_DOCUMENTS_FOR_DOCUMENT_SPLIT:
        order = list(range(len(documents)))
        random.Random(seed).shuffle(order)
        target = val_fraction * sum(len(doc.text) for doc in documents)
        val_ids: set[int] = set()
        held = 0
        for index in order:
            if held >= target:
                break
            val_ids.add(index)
            held += len(documents[index].text)
        train = [doc.text for i, doc in enumerate(documents) if i not in val_ids]
        val = [doc.text for i, doc in enumerate(documents) if i in val_ids]
        return train, val
    train, val = [], []
    for doc in documents:
        cut = int(len(doc.text) * (1.0 - val_fraction))
        train.append(doc.text[:cut])
        val.append(doc.text[cut:])
    return train, val


def _settings(config: DataConfig) -> dict[str, Any]:
    """The settings that change the prepared tokens (the path alone does not: the content does)."""
    return config.model_dump(mode="json", exclude={"path"}) | {"format_version": FORMAT_VERSION}


def _write_tokens(path: Path, texts: list[str], tokenizer: Tokenizer, dtype: Any) -> int:
    ids = tokenizer.encode(DOCUMENT_SEPARATOR.join(texts))
    array = np.asarray(ids, dtype=dtype)
    with path.open("wb") as handle:
        array.tofile(handle)
    return int(array.size)


def read_dataset_info(directory: Path) -> dict[str, Any] | None:
    info_path = directory / "dataset.json"
    if not info_path.is_file():
        return None
    info: dict[str, Any] = json.loads(info_path.read_text("utf-8"))
    return info


def prepare_dataset(
    config: DataConfig, workdir: Path, experiment: str, force: bool = False
) -> PrepareResult:
    """Prepare (or reuse) `datasets/<experiment>/`."""
    documents = list(iter_documents(config))
    fingerprint = corpus_fingerprint(documents)
    settings = _settings(config)
    target = dataset_dir(workdir, experiment)
    existing = read_dataset_info(target)
    if (
        not force
        and existing is not None
        and existing.get("source_hash") == fingerprint
        and existing.get("settings") == settings
    ):
        return PrepareResult(target, existing, skipped=True)

    train_texts, val_texts = split_documents(documents, config.val_fraction, config.seed)
    if not "".join(val_texts) or not "".join(train_texts):
        raise DataError("the corpus is too small to split into train and validation text")
    tokenizer = train_tokenizer(config.tokenizer, [doc.text for doc in documents])
    dtype = token_dtype(tokenizer.vocab_size)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{experiment}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tokenizer.save(staging / "tokenizer")
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source_hash": fingerprint,
        "settings": settings,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "documents": len(documents),
        "source_bytes": sum(len(doc.text.encode("utf-8")) for doc in documents),
        "train_tokens": _write_tokens(staging / "train.bin", train_texts, tokenizer, dtype),
        "val_tokens": _write_tokens(staging / "val.bin", val_texts, tokenizer, dtype),
    }
    (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    replace_dir(staging, target)
    return PrepareResult(target, info, skipped=False)


def require_dataset(workdir: Path, experiment: str) -> tuple[Path, dict[str, Any]]:
    """The prepared dataset, or an error that says which command creates it."""
    directory = dataset_dir(workdir, experiment)
    info = read_dataset_info(directory)
    if info is None:
        raise DataError(
            f"no prepared dataset at {directory}; run `ml-playground prepare {experiment}` "
            f"(with the same --workdir) first"
        )
    return directory, info
