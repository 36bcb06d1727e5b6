"""`prepare`: corpus → tokenizer + train/val token shards + `dataset.json`, atomically.

    manifest   one streaming pass: fingerprint the source, find documents and chunk boundaries
    split      whole documents to train or val (seeded), or each document's tail when there are
               too few documents to split
    tokenizer  trained on (a sample of) the training text, or loaded (tiktoken, hf)
    encode     units → token ids in parallel worker processes (`data.num_workers`), written in
               manifest order to uint16/uint32 shards, a separator after every document

Memory stays bounded by a few chunks per worker whatever the corpus size. The dataset directory
is built next to its final place and renamed into it, so a crash leaves either the old dataset or
the new one. Re-running with the same corpus and settings is a no-op unless `force` is set.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ml_playground.config.schema import DataConfig
from ml_playground.data.corpora import (
    PAIR_SEPARATOR,
    Manifest,
    build_manifest,
    plain_pair,
    read_pair,
    read_unit,
)
from ml_playground.data.images import image_tokens, is_image_corpus, load_images, quantize
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.tokenizers import (
    HuggingFaceTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
    uses_chat_template,
)
from ml_playground.errors import DataError
from ml_playground.fsutil import replace_dir

FORMAT_VERSION = 2
SPLITS = ("train", "val")
MASK_SUFFIX = "_mask"
"""`<split>_mask.bin` (or `<split>_mask-00000.bin`, ...): prompt/response pairs' loss masks,
one uint8 per token of the split (1 = a response token the loss scores, 0 = prompt)."""
# The char tokenizer has no end-of-text token: documents are separated by a blank line instead.
TEXT_SEPARATOR = "\n\n"
# Below this many units a whole-document split is too coarse; split each document's tail.
MIN_UNITS_FOR_DOCUMENT_SPLIT = 10
# Below this much text, worker processes cost more than they save.
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
TASK_BYTES = 1024 * 1024

Progress = Callable[[str, int, int], None]  # (phase, done bytes, total bytes)


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


def split_units(
    lengths: np.ndarray, val_fraction: float, seed: int, mode: str = "auto"
) -> tuple[np.ndarray, bool]:
    """(is_val per unit, tail_split): deterministic, seeded.

    With enough units, a seeded permutation picks whole units for validation until they hold
    `val_fraction` of the bytes, so validation text is unseen in style as well as content. With
    few (a single file), every unit's last `val_fraction` is held out instead, as nanoGPT does
    (`mode="documents"` insists on whole units whatever their number).
    """
    count = int(lengths.size)
    is_val = np.zeros(count, dtype=bool)
    if count < MIN_UNITS_FOR_DOCUMENT_SPLIT and not (mode == "documents" and count > 1):
        return is_val, True
    order = np.random.default_rng(seed).permutation(count)
    held = np.cumsum(lengths[order])
    target = val_fraction * float(lengths.sum())
    # Take units until the target is reached (at least one, never all).
    take = min(max(int(np.searchsorted(held, target)) + 1, 1), count - 1)
    is_val[order[:take]] = True
    return is_val, False


def split_corpus_tail(manifest: Manifest, val_fraction: float) -> tuple[Manifest, np.ndarray]:
    """nanoGPT's split: the corpus in manifest order, its last `val_fraction` of bytes held out.

    The unit holding the cut is split in two at the cut (moved on to the next UTF-8 character
    start; JSONL lines are never cut, the split moves to the next line), the first piece ending no
    document, so train is exactly the text before the cut. For ASCII text such as
    tinyshakespeare the cut is nanoGPT's `int(n * 0.9)` characters; val ends, like every
    document here, with the document separator.
    """
    ends = np.cumsum(manifest.length)
    cut = int(manifest.total_bytes * (1.0 - val_fraction))
    unit = int(np.searchsorted(ends, cut, side="right"))  # the unit holding byte `cut`
    offset = cut - (int(ends[unit - 1]) if unit else 0)
    if offset and not manifest.jsonl and unit < manifest.num_units:
        path = manifest.files[int(manifest.file_index[unit])]
        with path.open("rb") as handle:
            handle.seek(int(manifest.start[unit]) + offset)
            following = handle.read(4)
        offset += next(i for i, b in enumerate(following + b"\0") if b & 0xC0 != 0x80)
    if offset == 0 or manifest.jsonl or offset >= int(manifest.length[unit]):
        first_val = unit + (1 if offset > 0 else 0)
        is_val = np.arange(manifest.num_units) >= first_val
        return manifest, is_val

    def cut_in_two(array: np.ndarray, head: Any, tail: Any) -> np.ndarray:
        return np.concatenate(
            [array[:unit], np.asarray([head, tail], array.dtype), array[unit + 1 :]]
        )

    start, length = int(manifest.start[unit]), int(manifest.length[unit])
    pieces = replace(
        manifest,
        file_index=cut_in_two(manifest.file_index, *[manifest.file_index[unit]] * 2),
        start=cut_in_two(manifest.start, start, start + offset),
        length=cut_in_two(manifest.length, offset, length - offset),
        ends_document=cut_in_two(manifest.ends_document, False, manifest.ends_document[unit]),
    )
    return pieces, np.arange(pieces.num_units) > unit


def dataset_settings(config: DataConfig) -> dict[str, Any]:
    """What changes the prepared tokens (not the path, nor the worker count: the content does).

    `split` joins only when set: datasets prepared before it existed stay valid.
    """
    exclude = {"path", "num_workers"} | ({"split"} if config.split == "auto" else set())
    if config.pixel_levels is None:
        exclude.add("pixel_levels")
    return config.model_dump(mode="json", exclude=exclude) | {"format_version": FORMAT_VERSION}


def read_dataset_info(directory: Path) -> dict[str, Any] | None:
    info_path = directory / "dataset.json"
    if not info_path.is_file():
        return None
    info: dict[str, Any] = json.loads(info_path.read_text("utf-8"))
    return info


# --- encoding (runs in worker processes) ---------------------------------------------------------
@dataclass(frozen=True)
class EncodeTask:
    """Units to encode, by index; everything else the worker needs is in `_WORKER`."""

    units: tuple[int, ...]


_WORKER: dict[str, Any] = {}


def _init_worker(
    tokenizer_dir: Path, manifest: Manifest, config: DataConfig, is_val: np.ndarray, tail: bool
) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.update(
        tokenizer=load_tokenizer(tokenizer_dir),
        manifest=manifest,
        config=config,
        is_val=is_val,
        tail=tail,
    )
    _WORKER["chat"] = uses_chat_template(config, _WORKER["tokenizer"])


def _separator(tokenizer: Tokenizer) -> tuple[list[int], np.ndarray]:
    """The ids after every document, and which of them a response's loss mask scores.

    The end-of-text (or the char kind's blank line) after a response is scored: it teaches the
    model to stop. A BOS after it is not: it opens the next prompt.
    """
    if tokenizer.eot_id is not None:
        # A model whose tokenizer starts every text with BOS (Gemma, Llama) sees it after each
        # end-of-text, as it did in pretraining.
        bos = tokenizer.bos_id if isinstance(tokenizer, HuggingFaceTokenizer) else None
        if bos is None:
            return [tokenizer.eot_id], np.ones(1, dtype=np.uint8)
        return [tokenizer.eot_id, bos], np.asarray([1, 0], dtype=np.uint8)
    ids = tokenizer.encode(TEXT_SEPARATOR)
    return ids, np.ones(len(ids), dtype=np.uint8)


@dataclass(frozen=True)
class Piece:
    """One stretch of text to encode: a unit, or in a tail split one of its two halves.

    `response_start` (prompt/response pairs only) is the character of `text` where the
    response begins; `pair` is the (prompt, response) a chat template renders instead of `text`.
    """

    split: str
    text: str
    ends: bool  # a document ends here: the separator follows
    response_start: int | None = None
    pair: tuple[str, str] | None = None


@dataclass
class Encoded:
    """What one task produced, per split: token arrays, loss masks (pairs only), text bytes."""

    tokens: dict[str, list[np.ndarray]]
    masks: dict[str, list[np.ndarray]] | None
    source_bytes: int
    text_bytes: dict[str, int]
    response_bytes: dict[str, int]
    response_tokens: dict[str, int]


def _without_bos(ids: list[int], tokenizer: HuggingFaceTokenizer) -> list[int]:
    return ids[1:] if ids and ids[0] == tokenizer.bos_id else ids


def _chat_ids(tokenizer: Tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """A pair through the tokenizer's chat template, and its prompt alone with the generation
    prompt (the assistant header), both without a leading BOS (the separator before has one)."""
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    user = {"role": "user", "content": prompt}
    full = tokenizer.encode_chat([user, {"role": "assistant", "content": response}])
    head = tokenizer.encode_chat([user], add_generation_prompt=True)
    return _without_bos(full, tokenizer), _without_bos(head, tokenizer)


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` share."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def response_mask(ids: Sequence[int], prompt_ids: Sequence[int]) -> np.ndarray:
    """1 for the tokens of `ids` after the prompt, 0 for the prompt's.

    The prompt is the longest prefix `ids` shares with the prompt's own encoding, so a token
    that merges the prompt's last characters with the response's first is scored.
    """
    mask = np.ones(len(ids), dtype=np.uint8)
    mask[: _shared_prefix(ids, prompt_ids)] = 0
    return mask


def _pieces(unit: int) -> list[Piece]:
    """A unit as the pieces it is encoded in (two in a tail split, else one)."""
    manifest: Manifest = _WORKER["manifest"]
    config: DataConfig = _WORKER["config"]
    file = int(manifest.file_index[unit])
    where = (
        manifest.files[file],
        manifest.names[file],
        int(manifest.start[unit]),
        int(manifest.length[unit]),
    )
    pair: tuple[str, str] | None = None
    response_start: int | None = None
    if manifest.jsonl and config.prompt_field is not None:
        pair = read_pair(*where, config)
        text = plain_pair(*pair)
        response_start = len(pair[0]) + len(PAIR_SEPARATOR)
    else:
        text = read_unit(*where, manifest.jsonl, config)
    if _WORKER["tail"]:  # never with a chat template: `prepare_dataset` refuses that
        cut = int(len(text) * (1.0 - config.val_fraction))
        tail_start = None if response_start is None else max(response_start - cut, 0)
        return [
            Piece("train", text[:cut], True, response_start),
            Piece("val", text[cut:], True, tail_start),
        ]
    split = "val" if _WORKER["is_val"][unit] else "train"
    chat = pair if _WORKER["chat"] else None
    return [Piece(split, text, bool(manifest.ends_document[unit]), response_start, chat)]


def _encode_task(task: EncodeTask) -> Encoded:
    """Token arrays of the task's units per split, with their loss masks for pairs.

    Text bytes are the UTF-8 bytes behind each split's tokens, for bits per byte: an end-of-text
    separator counts 0 bytes (it marks a boundary, it is not text), the char kind's "\\n\\n" 2.
    Response bytes count only the scored part (the response and the separator after it).
    """
    tokenizer: Tokenizer = _WORKER["tokenizer"]
    manifest: Manifest = _WORKER["manifest"]
    pairs = _WORKER["config"].prompt_field is not None
    dtype = token_dtype(tokenizer.vocab_size)
    separator, separator_mask = _separator(tokenizer)
    separator_bytes = 0 if tokenizer.eot_id is not None else len(TEXT_SEPARATOR.encode())
    pieces = [piece for unit in task.units for piece in _pieces(unit)]
    prompts: list[list[int]] = []
    if _WORKER["chat"]:
        rendered = [_chat_ids(tokenizer, *piece.pair) for piece in pieces if piece.pair]
        encoded = [full for full, _ in rendered]
        prompts = [head for _, head in rendered]
    else:  # One batch call: the Rust tokenizers spread it over every core.
        encoded = tokenizer.encode_batch([piece.text for piece in pieces])
        if pairs:  # each pair's text up to its response: what the mask leaves unscored
            prompts = tokenizer.encode_batch(
                [piece.text[: piece.response_start] for piece in pieces]
            )
    result = Encoded(
        tokens={split: [] for split in SPLITS},
        masks={split: [] for split in SPLITS} if pairs else None,
        source_bytes=sum(int(manifest.length[unit]) for unit in task.units),
        text_bytes=dict.fromkeys(SPLITS, 0),
        response_bytes=dict.fromkeys(SPLITS, 0),
        response_tokens=dict.fromkeys(SPLITS, 0),
    )
    for index, (piece, ids) in enumerate(zip(pieces, encoded, strict=True)):
        tail = separator if piece.ends else []
        result.tokens[piece.split].append(np.asarray(ids + tail, dtype=dtype))
        tail_bytes = separator_bytes if piece.ends else 0
        result.text_bytes[piece.split] += len(piece.text.encode()) + tail_bytes
        if result.masks is not None and piece.response_start is not None:
            mask = response_mask(ids, prompts[index])
            if piece.ends:
                # A tail split's first half may end inside the prompt: no response, no stop.
                has_response = piece.response_start <= len(piece.text)
                mask = np.concatenate([mask, separator_mask * has_response])
                tail_bytes *= has_response
            result.masks[piece.split].append(mask)
            result.response_tokens[piece.split] += int(np.count_nonzero(mask))
            response = piece.text[piece.response_start :]
            result.response_bytes[piece.split] += len(response.encode()) + tail_bytes
    return result


class ShardWriter:
    """Appends token arrays to `<split>-00000.bin`, `<split>-00001.bin`, ... of bounded size."""

    def __init__(self, directory: Path, split: str, shard_tokens: int) -> None:
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.files: list[Path] = []
        self.counts: list[int] = []
        self.handle: BinaryIO | None = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self.handle is None or self.counts[-1] >= self.shard_tokens:
                self._next_shard()
            assert self.handle is not None
            room = self.shard_tokens - self.counts[-1]
            head, tokens = tokens[:room], tokens[room:]
            head.tofile(self.handle)
            self.counts[-1] += int(head.size)

    def _next_shard(self) -> None:
        if self.handle is not None:
            self.handle.close()
        path = self.directory / f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(path)
        self.counts.append(0)
        self.handle = path.open("wb")

    def close(self) -> list[dict[str, Any]]:
        """Finish; a split that fits in one shard is simply `<split>.bin`."""
        if self.handle is not None:
            self.handle.close()
        if len(self.files) == 1:
            single = self.directory / f"{self.split}.bin"
            self.files[0].rename(single)
            self.files = [single]
        return [
            {"file": path.name, "tokens": count}
            for path, count in zip(self.files, self.counts, strict=True)
        ]


def _tasks(manifest: Manifest) -> Iterator[EncodeTask]:
    """Consecutive units grouped up to `TASK_BYTES` of text (at least one unit per task).

    Bounding tasks by bytes, not by count, is what bounds memory: a task's text, its token ids
    and their arrays are all that a worker holds at once.
    """
    units: list[int] = []
    held = 0
    for unit in range(manifest.num_units):
        length = int(manifest.length[unit])
        if units and held + length > TASK_BYTES:
            yield EncodeTask(tuple(units))
            units, held = [], 0
        units.append(unit)
        held += length
    if units:
        yield EncodeTask(tuple(units))


def _worker_count(config: DataConfig, total_bytes: int) -> int:
    if total_bytes < PARALLEL_MIN_BYTES and config.num_workers == 0:
        return 1
    return config.num_workers or min(os.cpu_count() or 1, 8)


def _encode_all(
    manifest: Manifest,
    config: DataConfig,
    is_val: np.ndarray,
    tail: bool,
    tokenizer_dir: Path,
    writers: dict[str, ShardWriter],
    progress: Progress | None,
) -> dict[str, int]:
    """Encode every unit; results are written in manifest order whatever the worker count.

    `writers` has a `<split>` writer per split and, for prompt/response pairs, a
    `<split>_mask` writer that receives each token array's loss mask (same lengths, so the same
    shard boundaries). Returns dataset.json's totals: the UTF-8 bytes of text behind each
    split's tokens (`<split>_bytes`) and, for pairs, the tokens the masks score and the bytes of
    their text (`<split>_response_tokens`, `<split>_response_bytes`).
    """
    args = (tokenizer_dir, manifest, config, is_val, tail)
    workers = _worker_count(config, manifest.total_bytes)
    done, total = 0, manifest.total_bytes
    totals = {f"{split}_bytes": 0 for split in SPLITS}

    def add(key: str, value: int) -> None:
        totals[key] = totals.get(key, 0) + value

    def consume(results: Iterator[Encoded]) -> None:
        nonlocal done
        for result in results:
            for split in SPLITS:
                # One write per task and split: thousands of short pairs are thousands of arrays.
                if result.tokens[split]:
                    writers[split].write(np.concatenate(result.tokens[split]))
                add(f"{split}_bytes", result.text_bytes[split])
                if result.masks is not None:
                    if result.masks[split]:
                        writers[f"{split}{MASK_SUFFIX}"].write(np.concatenate(result.masks[split]))
                    add(f"{split}_response_tokens", result.response_tokens[split])
                    add(f"{split}_response_bytes", result.response_bytes[split])
            done += result.source_bytes
            if progress is not None:
                progress("encode", done, total)

    if workers <= 1:
        _init_worker(*args)
        try:
            consume(_encode_task(task) for task in _tasks(manifest))
        finally:
            _WORKER.clear()
        return totals
    context = multiprocessing.get_context("spawn")  # no fork after torch/threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=args
    ) as pool:
        # `map` would submit every task at once; a window of 4 per worker bounds memory.
        window = workers * 4
        pending: list[Any] = []
        for task in _tasks(manifest):
            pending.append(pool.submit(_encode_task, task))
            if len(pending) >= window:
                consume(iter([pending.pop(0).result()]))
        consume(future.result() for future in pending)
    return totals


# --- tokenizer training --------------------------------------------------------------------------
def _training_texts(
    manifest: Manifest, config: DataConfig, is_val: np.ndarray, tail: bool
) -> Iterator[str]:
    """Text the tokenizer learns from.

    char: every unit (a character only in validation text would otherwise be unencodable).
    trained kinds: training units in a seeded order, up to `data.tokenizer_sample_bytes`.
    """
    if config.tokenizer == "char":
        order: Sequence[int] = range(manifest.num_units)
        budget = None
    else:
        candidates = np.flatnonzero(~is_val)
        order = np.random.default_rng(config.seed + 1).permutation(candidates).tolist()
        budget = config.tokenizer_sample_bytes
    used = 0
    for unit in order:
        file = int(manifest.file_index[unit])
        text = read_unit(
            manifest.files[file],
            manifest.names[file],
            int(manifest.start[unit]),
            int(manifest.length[unit]),
            manifest.jsonl,
            config,
        )
        if tail and config.tokenizer != "char":
            text = text[: int(len(text) * (1.0 - config.val_fraction))]
        yield text
        used += int(manifest.length[unit])
        if budget is not None and used >= budget:
            return
    if config.tokenizer == "char":
        yield TEXT_SEPARATOR


def _up_to_date(existing: dict[str, Any], fingerprint: str, settings: dict[str, Any]) -> bool:
    """Whether a prepared dataset came from this source with these [data] settings."""
    return existing.get("source_hash") == fingerprint and existing.get("settings") == settings


def prepare_dataset(
    config: DataConfig,
    workdir: Path,
    experiment: str,
    force: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    """Prepare (or reuse) `datasets/<experiment>/`."""
    if is_image_corpus(config):
        return _prepare_images(config, workdir, experiment, force)
    manifest = build_manifest(config)
    settings = dataset_settings(config)
    target = dataset_dir(workdir, experiment)
    existing = read_dataset_info(target)
    if (
        not force
        and existing is not None
        and _up_to_date(existing, manifest.fingerprint, settings)
        # Pairs prepared before loss masks existed are prepared again to get them.
        and (config.prompt_field is None or "loss_mask" in existing)
    ):
        return PrepareResult(target, existing, skipped=True)

    if config.split == "tail":
        manifest, is_val = split_corpus_tail(manifest, config.val_fraction)
        tail = False
    else:
        is_val, tail = split_units(manifest.length, config.val_fraction, config.seed, config.split)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{experiment}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if progress is not None:
        progress("tokenizer", 0, manifest.total_bytes)
    tokenizer = train_tokenizer(config, _training_texts(manifest, config, is_val, tail))
    if uses_chat_template(config, tokenizer) and tail:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"{manifest.num_units} prompt/response pairs are too few to hold whole pairs out for "
            f"validation; give at least {MIN_UNITS_FOR_DOCUMENT_SPLIT}"
        )
    tokenizer.save(staging / "tokenizer")
    dtype = token_dtype(tokenizer.vocab_size)

    pairs = config.prompt_field is not None
    names = [f"{split}{suffix}" for suffix in ("", MASK_SUFFIX)[: 1 + pairs] for split in SPLITS]
    writers = {name: ShardWriter(staging, name, config.shard_tokens) for name in names}
    try:
        totals = _encode_all(
            manifest, config, is_val, tail, staging / "tokenizer", writers, progress
        )
    finally:
        shards = {name: writer.close() for name, writer in writers.items()}
    counts = {split: sum(s["tokens"] for s in shards[split]) for split in SPLITS}
    if counts["val"] == 0 or counts["train"] == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError("the corpus is too small to split into train and validation text")
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source_hash": manifest.fingerprint,
        "settings": settings,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(dtype).name,
        "documents": manifest.num_documents,
        "units": manifest.num_units,
        "val_documents": int(is_val[manifest.ends_document].sum()) if not tail else 0,
        "split": "corpus_tail" if config.split == "tail" else "tail" if tail else "document",
        "source_bytes": manifest.total_bytes,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        # UTF-8 bytes of the text behind each split's tokens: the denominator of bits per byte
        # (`<split>_bytes`); for pairs also the tokens the loss masks score and their bytes.
        **totals,
        "shards": {split: shards[split] for split in SPLITS},
    }
    if pairs:
        info["loss_mask"] = {split: shards[f"{split}{MASK_SUFFIX}"] for split in SPLITS}
    (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    replace_dir(staging, target)
    return PrepareResult(target, info, skipped=False)


def _prepare_images(
    config: DataConfig, workdir: Path, experiment: str, force: bool
) -> PrepareResult:
    """Images are not UTF-8 text: they become token arrays directly (see `data.images`).

    Same outputs as text (tokenizer/, train.bin, val.bin, dataset.json); `*_bytes` count the
    pixels (one byte each in a uint8 image), so bits per byte reads as bits per pixel.
    """
    images = load_images(config)
    settings = dataset_settings(config)
    target = dataset_dir(workdir, experiment)
    existing = read_dataset_info(target)
    if not force and existing is not None and _up_to_date(existing, images.fingerprint, settings):
        return PrepareResult(target, existing, skipped=True)
    tokenizer = train_tokenizer(config, [])
    assert isinstance(tokenizer, PixelTokenizer)
    levels = quantize(images.images, images.max_value, tokenizer.levels)
    dtype = token_dtype(tokenizer.vocab_size)
    staging = target.parent / f".{experiment}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer.save(staging / "tokenizer")
    shards, counts = {}, {}
    for split, mask in (("train", ~images.is_val), ("val", images.is_val)):
        writer = ShardWriter(staging, split, config.shard_tokens)
        tokens = image_tokens(levels[mask], images.labels[mask], tokenizer.levels)
        writer.write(tokens.astype(dtype))
        shards[split] = writer.close()
        counts[split] = int(mask.sum())
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source_hash": images.fingerprint,
        "settings": settings,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": np.dtype(dtype).name,
        "documents": len(images.labels),
        "units": len(images.labels),
        "val_documents": counts["val"],
        "split": "image",
        "image_shape": list(images.shape),
        "pixel_levels": tokenizer.levels,
        "source_bytes": int(images.images.size),
        "train_tokens": sum(s["tokens"] for s in shards["train"]),
        "val_tokens": sum(s["tokens"] for s in shards["val"]),
        "train_bytes": counts["train"] * tokenizer.pixels_per_image,
        "val_bytes": counts["val"] * tokenizer.pixels_per_image,
        "shards": shards,
    }
    (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    replace_dir(staging, target)
    return PrepareResult(target, info, skipped=False)


def split_files(directory: Path, info: dict[str, Any], split: str) -> list[Path]:
    """The token files of one split (one `<split>.bin`, or numbered shards)."""
    shards = info.get("shards", {}).get(split)
    if not shards:
        return [directory / f"{split}.bin"]
    return [directory / shard["file"] for shard in shards]


def mask_files(directory: Path, info: dict[str, Any], split: str) -> list[Path] | None:
    """The loss-mask files of one split, shard for shard beside `split_files`, or None when the
    dataset has none (plain text: every token is scored)."""
    shards = info.get("loss_mask", {}).get(split)
    if not shards:
        return None
    return [directory / shard["file"] for shard in shards]


def require_dataset(workdir: Path, experiment: str) -> tuple[Path, dict[str, Any]]:
    """The prepared dataset, or an error that says which command creates it."""
    directory = dataset_dir(workdir, experiment)
    info = read_dataset_info(directory)
    if info is None:
        raise DataError(
            f"no prepared dataset at {directory}; run `ml-playground prepare {experiment}` "
            f"(with the same --workdir) first"
        )
    if info.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{directory} was prepared by an older version; run "
            f"`ml-playground prepare {experiment} --force`"
        )
    return directory, info
