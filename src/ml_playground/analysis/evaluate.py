"""Loss, perplexity and bits per byte of a checkpoint, on every token of a split or a text file.

Every token is scored exactly once, in a fixed order (no random batches, so two runs agree to
the last digit on the same device):

- the text is preceded by a document boundary (the end-of-text token, or the char kind's blank
  line) that is context only, so the first token is scored too and bits per byte divides by
  exactly the bytes of the text;
- with `stride == block_size` (the default) the stream is cut into non-overlapping windows of
  `block_size` tokens, as nanoGPT's and litgpt's evaluations do;
- a smaller stride slides the window by `stride` tokens and scores only the last `stride`
  targets of each window, so every token sees at least `block_size - stride` tokens of context
  (the Hugging Face perplexity recipe), at `block_size / stride` times the cost;
- on prompt/response pairs only the response tokens are scored, as in training (the dataset's
  loss mask; `train.train_on_prompt=true` scores every token), and bits per byte divides by the
  responses' bytes.

`evaluate_run` is the whole `ml-playground evaluate` command minus the rendering: resolve the
checkpoint, score, optionally draw and score samples, write `eval.json` in the run dir.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml_playground.analysis.metrics import (
    bits_per_byte,
    bits_per_token,
    perplexity,
    summarize,
    text_metrics,
)
from ml_playground.analysis.samples import SampleScorer
from ml_playground.analysis.text_bytes import count_text_bytes
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.prepare import (
    TEXT_SEPARATOR,
    dataset_dir,
    dataset_settings,
    mask_files,
    read_dataset_info,
    require_dataset,
    split_files,
)
from ml_playground.data.tokenizers import Tokenizer
from ml_playground.errors import DataError, MLPlaygroundError
from ml_playground.generate.service import LoadedModel, load_for_inference, sample_texts
from ml_playground.model.gpt import GPT
from ml_playground.train.device import Precision, resolve_dtype
from ml_playground.train.loop import run_dir_for
from ml_playground.train.run_checkpoint import find_run_checkpoint

EVAL_FILE = "eval.json"
# Logits held at once per batch (rows x block_size x vocab floats): about 64 MB in float32.
_LOGITS_BUDGET = 1 << 24
_MAX_ROWS = 64

Progress = Callable[[int, int], None]  # (targets scored, targets in all)
Say = Callable[[str], None]


class TokenStream:
    """Several token arrays (a boundary prefix, then shards) read as one sequence, by range.

    Memmapped shards are only read window by window, so a split of any size fits in memory.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [part for part in parts if len(part)]
        self.offsets = np.cumsum([0, *(len(part) for part in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) as int64."""
        pieces = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for index in range(max(first, 0), len(self.parts)):
            base = int(self.offsets[index])
            if base >= end:
                break
            part = self.parts[index]
            pieces.append(np.asarray(part[max(start - base, 0) : end - base], dtype=np.int64))
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Window:
    """Inputs stream[start:end], targets stream[start+1:end+1]; only the last `keep` count."""

    start: int
    end: int
    keep: int


def windows(length: int, first_target: int, block_size: int, stride: int) -> list[Window]:
    """The windows that score every target in [first_target, length) exactly once."""
    if not 1 <= stride <= block_size:
        raise MLPlaygroundError(f"--stride must be between 1 and block_size={block_size}")
    if first_target < 1:
        raise ValueError("the first target needs at least one token of context before it")
    out = []
    for a in range(first_target, length, stride):
        b = min(a + stride, length)
        end = b - 1
        out.append(Window(max(0, end - block_size), end, b - a))
    return out


def boundary_ids(tokenizer: Tokenizer) -> list[int]:
    """What precedes every document in a prepared split: end-of-text, or a blank line (char)."""
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    return tokenizer.encode(TEXT_SEPARATOR)


@torch.inference_mode()
def score_stream(
    model: GPT,
    stream: TokenStream,
    first_target: int,
    precision: Precision,
    stride: int | None = None,
    progress: Progress | None = None,
    scored_mask: TokenStream | None = None,
) -> tuple[int, float]:
    """(targets scored, summed cross-entropy in nats) over stream[first_target:].

    Windows of equal length are batched; the sum is accumulated in float64. With `scored_mask`
    (laid out like `stream`) only targets whose mask is nonzero are scored.
    """
    block_size = model.block_size
    plan = windows(len(stream), first_target, block_size, stride or block_size)
    rows = max(1, min(_MAX_ROWS, _LOGITS_BUDGET // (block_size * model.vocab_size)))
    device = precision.device
    total = 0.0
    scored = done = 0
    targets = len(stream) - first_target
    batch: list[Window] = []

    def run(batch: list[Window]) -> None:
        nonlocal total, scored, done
        x = np.stack([stream.read(w.start, w.end) for w in batch])
        y = np.stack([stream.read(w.start + 1, w.end + 1) for w in batch])
        inputs = torch.from_numpy(x).to(device)
        labels = torch.from_numpy(y).to(device)
        with precision.autocast():
            logits, _ = model(inputs, labels)
        losses = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
        width = losses.size(1)
        keep = torch.tensor([w.keep for w in batch], device=device)
        mask = torch.arange(width, device=device)[None, :] >= (width - keep)[:, None]
        done += int(keep.sum().item())
        if scored_mask is not None:
            m = np.stack([scored_mask.read(w.start + 1, w.end + 1) for w in batch])
            mask &= torch.from_numpy(m != 0).to(device)
        total += float(losses.masked_fill(~mask, 0.0).double().sum().item())
        scored += int(mask.sum().item())
        if progress is not None:
            progress(done, targets)

    for window in plan:
        if batch and (
            len(batch) == rows or window.end - window.start != batch[0].end - batch[0].start
        ):
            run(batch)
            batch = []
        batch.append(window)
    if batch:
        run(batch)
    return scored, total


@dataclass(frozen=True)
class Evaluation:
    """The scores of one text; `loss` is the mean cross-entropy per token, in nats."""

    tokens: int
    bytes: int
    loss_sum: float
    seconds: float

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss": self.loss,
            "perplexity": perplexity(self.loss),
            "bits_per_token": bits_per_token(self.loss),
            "bits_per_byte": bits_per_byte(self.loss_sum, self.bytes),
            "seconds": self.seconds,
            "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else None,
        }


def evaluate_tokens(
    loaded: LoadedModel,
    parts: Sequence[np.ndarray],
    n_bytes: int,
    precision: Precision,
    stride: int | None = None,
    progress: Progress | None = None,
    masks: Sequence[np.ndarray] | None = None,
) -> Evaluation:
    """Score every token of `parts` (one text, possibly in shards) after a document boundary;
    with `masks` (a loss mask per part, see `split_masks`) only the tokens they mark."""
    prefix = np.asarray(boundary_ids(loaded.tokenizer), dtype=np.int64)
    stream = TokenStream([prefix, *parts])
    if len(stream) <= len(prefix):
        raise DataError("there is no text to evaluate (0 tokens)")
    scored_mask = None
    if masks is not None:
        scored_mask = TokenStream([np.zeros(len(prefix), dtype=np.uint8), *masks])
    started = time.perf_counter()
    scored, total = score_stream(
        loaded.model, stream, len(prefix), precision, stride, progress, scored_mask
    )
    if scored == 0:
        raise DataError("the loss mask scores none of these tokens (no response tokens)")
    return Evaluation(scored, n_bytes, total, time.perf_counter() - started)


def evaluate_text(
    loaded: LoadedModel,
    text: str,
    precision: Precision,
    stride: int | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Score a text (for example a file the model never saw) with the checkpoint's tokenizer."""
    ids = np.asarray(loaded.tokenizer.encode(text), dtype=np.int64)
    return evaluate_tokens(loaded, [ids], len(text.encode("utf-8")), precision, stride, progress)


def check_dataset_matches(loaded: LoadedModel, directory: Path, info: dict[str, Any]) -> None:
    """The dataset must be prepared with the checkpoint's [data] settings.

    Otherwise its token ids would stand for other text than the model learned.
    """
    settings = dataset_settings(loaded.checkpoint.config.data)
    changed = sorted(k for k, v in settings.items() if info.get("settings", {}).get(k) != v)
    if changed or info.get("vocab_size") != loaded.tokenizer.vocab_size:
        raise DataError(
            f"{directory} was prepared with other [data] settings than {loaded.checkpoint.path} "
            f"({', '.join(changed) or 'vocab_size'}); prepare it again with the checkpoint's "
            f"config, or evaluate a text file with --data FILE"
        )


def split_tokens(
    loaded: LoadedModel,
    directory: Path,
    info: dict[str, Any],
    split: str,
    max_tokens: int | None = None,
) -> tuple[list[np.ndarray], int]:
    """A prepared split's shards (cut to `max_tokens`) and the UTF-8 bytes of their text."""
    check_dataset_matches(loaded, directory, info)
    dtype = np.dtype(info["dtype"])
    parts: list[np.ndarray] = []
    left = max_tokens
    for path in split_files(directory, info, split):
        if not path.is_file():
            raise DataError(f"missing token file {path}; run `ml-playground prepare --force`")
        tokens: np.ndarray = np.memmap(path, dtype=dtype, mode="r")
        if left is not None:
            tokens = tokens[:left]
            left -= len(tokens)
        parts.append(tokens)
        if left == 0:
            break
    recorded = info.get(f"{split}_bytes")
    whole = max_tokens is None or max_tokens >= int(info.get(f"{split}_tokens", 0))
    if recorded and whole:
        return parts, int(recorded)
    return parts, sum(count_text_bytes(loaded.tokenizer, part) for part in parts)


def split_masks(
    loaded: LoadedModel,
    directory: Path,
    info: dict[str, Any],
    split: str,
    parts: Sequence[np.ndarray],
) -> tuple[list[np.ndarray], int] | None:
    """The loss masks of `parts` (as `split_tokens` cut them) and the UTF-8 bytes of the text
    they score, or None when the split has none (plain text)."""
    files = mask_files(directory, info, split)
    if files is None:
        return None
    masks: list[np.ndarray] = []
    for path, part in zip(files, parts, strict=False):
        if not path.is_file():
            raise DataError(f"missing loss mask {path}; run `ml-playground prepare --force`")
        masks.append(np.memmap(path, dtype=np.uint8, mode="r")[: len(part)])
    recorded = info.get(f"{split}_response_bytes")
    whole = sum(map(len, parts)) >= int(info.get(f"{split}_tokens", 0))
    if recorded is not None and whole:
        return masks, int(recorded)
    scored = (np.asarray(part)[np.asarray(m) != 0] for part, m in zip(parts, masks, strict=True))
    return masks, sum(count_text_bytes(loaded.tokenizer, ids) for ids in scored)


def resolve_run_checkpoint(config: ExperimentConfig, workdir: Path, which: str, say: Say) -> Path:
    """`best` (falling back to `last` with a notice), `last`, or a checkpoint directory."""
    return find_run_checkpoint(
        run_dir_for(workdir, config),
        which,
        verb="evaluating",
        creator=f"ml-playground train {config.name}",
        say=say,
    )


def score_samples(
    loaded: LoadedModel, config: ExperimentConfig, count: int, workdir: Path
) -> dict[str, Any]:
    """Draw `count` samples with the [sample] settings and score their quality.

    Memorization is checked against the prepared training split when it exists.
    """
    settings = config.sample.model_copy(update={"num_samples": count})
    texts = sample_texts(loaded, settings)
    directory = dataset_dir(workdir, config.name)
    if read_dataset_info(directory) is not None:
        rows = SampleScorer.for_dataset(directory).score(texts)
    else:
        rows = [dict(text_metrics(text)) for text in texts]
    return {
        "count": count,
        "prompt": settings.prompt,
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "mean": summarize(rows),
        "per_sample": rows,
        "texts": texts,
    }


def pixel_scores(
    tokenizer: PixelTokenizer, result: Evaluation, parts: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Image models: the whole images' loss per pixel (Image GPT's bits per dimension).

    The sum over every scored token (class, pixels, image end) divided by the pixels, so it
    is the cost of coding an image, spread over its pixels.
    """
    pixels = sum(int(np.count_nonzero(np.asarray(part) < tokenizer.levels)) for part in parts)
    if pixels == 0:
        return {}
    nats = result.loss_sum / pixels
    return {"pixels": pixels, "nats_per_pixel": nats, "bits_per_pixel": nats / math.log(2)}


def evaluate_run(
    config: ExperimentConfig,
    workdir: Path,
    *,
    checkpoint: str = "best",
    split: str = "val",
    data_file: Path | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    samples: int = 0,
    say: Say = print,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint and write the report to `<run dir>/eval.json`."""
    path = resolve_run_checkpoint(config, workdir, checkpoint, say)
    loaded = load_for_inference(path, config.train.device, config.sample.weights)
    precision = Precision(loaded.device, resolve_dtype(config.train.dtype, loaded.device))
    target = f"file:{data_file}" if data_file is not None else split
    iteration = loaded.checkpoint.state.get("iter")
    parts: list[np.ndarray] = []
    masks: list[np.ndarray] | None = None
    n_bytes = 0
    if data_file is None:
        directory, info = require_dataset(workdir, config.name)
        parts, n_bytes = split_tokens(loaded, directory, info, split, max_tokens)
        scored = split_masks(loaded, directory, info, split, parts)
        if scored is not None and not config.train.train_on_prompt:  # as training scored them
            masks, n_bytes = scored
    scope = " (response tokens only)" if masks is not None else ""
    say(f"evaluating {path} (iter {iteration}) on {target}{scope}, {loaded.device}")
    if data_file is not None:
        try:
            text = data_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {data_file} as UTF-8 text: {exc}") from None
        if max_tokens is not None:
            raise MLPlaygroundError("--max-tokens applies to prepared splits; cut the file instead")
        result = evaluate_text(loaded, text, precision, stride, progress)
    else:
        result = evaluate_tokens(loaded, parts, n_bytes, precision, stride, progress, masks)
    model_config = loaded.checkpoint.config.model
    report: dict[str, Any] = {
        "experiment": config.name,
        "run": config.train.run_name,
        "checkpoint": str(path),
        "iter": iteration,
        "weights": config.sample.weights,
        "evaluated": target,
        # Prompt/response pairs: only the response tokens (and bytes) were scored, as in training.
        "response_only": masks is not None,
        **result.as_dict(),
        "block_size": model_config.block_size,
        "stride": stride or model_config.block_size,
        "tokenizer": loaded.tokenizer.kind,
        "vocab_size": loaded.tokenizer.vocab_size,
        "device": str(loaded.device),
    }
    if isinstance(loaded.tokenizer, PixelTokenizer) and parts:
        report |= pixel_scores(loaded.tokenizer, result, parts)
    if samples > 0:
        report["samples"] = score_samples(loaded, config, samples, workdir)
    run_dir = run_dir_for(workdir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / EVAL_FILE).write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    report["path"] = str(run_dir / EVAL_FILE)
    return report
