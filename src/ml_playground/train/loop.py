"""The training loop, readable top to bottom.

    setup:   dataset → tokenizer → model → optimizer → (resume from checkpoints/last)
    loop:    lr schedule → grad_accum distinct micro-batches → clip → step
             every log_interval: progress      every eval_interval: train/val loss, `best`
             every checkpoint_interval and at the end: `last`
    finish:  summary.json

Resume is exact: the checkpoint carries the optimizer, every RNG state and the data cursor, and
evaluation draws from its own generator, so N steps + resume + N steps equals 2N steps straight.
SIGINT/SIGTERM finish the current step, save `last`, and raise `TrainingInterrupted`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.loader import TokenBatches
from ml_playground.data.prepare import require_dataset
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.errors import CheckpointError, DataError, MLPlaygroundError
from ml_playground.fsutil import recover_dir
from ml_playground.model.gpt import GPT
from ml_playground.tracking.tensorboard import TensorBoardTracker
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.callbacks import (
    Callback,
    CheckpointEvent,
    EvalEvent,
    LogEvent,
    MetricsFile,
    RunStart,
    TrackerCallback,
)
from ml_playground.train.device import Precision, resolve_device, resolve_dtype
from ml_playground.train.optim import build_optimizer, learning_rate_at

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "tb", "config.toml")


class TrainingInterrupted(MLPlaygroundError):
    """Training stopped on SIGINT/SIGTERM after saving `last`; the CLI exits 130."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


def run_dir_for(workdir: Path, config: ExperimentConfig) -> Path:
    return workdir / "runs" / config.name / config.train.run_name


def with_vocab_size(config: ExperimentConfig, vocab_size: int) -> ExperimentConfig:
    """Fill `model.vocab_size` from the tokenizer; a conflicting explicit value is an error."""
    if config.model.vocab_size not in (None, vocab_size):
        raise MLPlaygroundError(
            f"model.vocab_size={config.model.vocab_size} but the prepared tokenizer has "
            f"{vocab_size} tokens; leave model.vocab_size unset"
        )
    model = config.model.model_copy(update={"vocab_size": vocab_size})
    return config.model_copy(update={"model": model})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device, say: Any) -> nn.Module:
    """`torch.compile` where it can work; elsewhere a one-line notice and the eager model."""
    if not enabled:
        return model
    if device.type == "mps":
        say("notice: train.compile is off on MPS (not supported there); training eagerly")
        return model
    return torch.compile(model)  # type: ignore[return-value]


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    splits: dict[str, TokenBatches],
    eval_iters: int,
    precision: Precision,
    seed: int,
) -> dict[str, float]:
    """Mean loss over `eval_iters` batches per split, drawn from a generator seeded by `seed`.

    Restoring each split's cursor afterwards keeps training batches unaffected by evaluation.
    """
    model.eval()
    losses: dict[str, float] = {}
    for name, batches in splits.items():
        saved = batches.state()
        batches.generator.manual_seed(seed)
        total = 0.0
        for _ in range(eval_iters):
            x, y = batches.next_batch()
            with precision.autocast():
                _, loss = model(x, y)
            assert loss is not None
            total += loss.item()
        batches.load_state(saved)
        losses[name] = total / eval_iters
    model.train()
    return losses


def train(
    config: ExperimentConfig,
    workdir: Path,
    *,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train `config` in `runs/<name>/<run_name>/`, resuming from its `last` checkpoint if any."""
    tcfg = config.train
    run_dir = run_dir_for(workdir, config)
    data_dir, dataset_info = require_dataset(workdir, config.name)
    if dataset_info.get("settings", {}).get("tokenizer") != config.data.tokenizer:
        raise DataError(
            f"{data_dir} was prepared with another tokenizer; run "
            f"`ml-playground prepare {config.name} --force`"
        )
    tokenizer_dir = data_dir / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir)
    config = with_vocab_size(config, tokenizer.vocab_size)

    device = resolve_device(tcfg.device)
    precision = Precision(device, resolve_dtype(tcfg.dtype, device))
    seed_everything(tcfg.seed)
    model = GPT(config.model).to(device)
    optimizer = build_optimizer(model, tcfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)

    def batches(split: str, seed: int) -> TokenBatches:
        return TokenBatches(
            data_dir / f"{split}.bin",
            dataset_info["dtype"],
            config.model.block_size,
            tcfg.batch_size,
            device,
            seed,
        )

    train_batches = batches("train", tcfg.seed)
    eval_splits = {"train": batches("train", tcfg.seed + 1), "val": batches("val", tcfg.seed + 2)}

    # --- resume, or start over --------------------------------------------------------------
    last_dir = run_dir / "checkpoints" / "last"
    start_iter, best_val, best_iter, wall_before = 0, math.inf, -1, 0.0
    if not resume:
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    else:
        recover_dir(last_dir)
    if resume and last_dir.exists():
        last = ckpt.open_checkpoint(last_dir)
        if last.config.model != config.model:
            raise CheckpointError(
                f"{last_dir} was trained with a different [model] section; use the same model "
                f"settings to resume, or pass --no-resume (or another train.run_name) to start over"
            )
        ckpt.load_weights(last, model)
        ckpt.load_optimizer(last, optimizer)
        state = last.state
        start_iter = int(state["iter"])
        best_val = float(state["best_val_loss"]) if state["best_val_loss"] is not None else math.inf
        best_iter = int(state["best_iter"])
        wall_before = float(state.get("wall_s", 0.0))
        ckpt.restore_rng_state(state["rng"])
        train_batches.load_state(ckpt.decode_tensor(state["data_cursor"]))
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])

    run_dir.mkdir(parents=True, exist_ok=True)
    config_toml = config_to_toml(config)
    (run_dir / "config.toml").write_text(config_toml, "utf-8")
    all_callbacks: list[Callback] = [MetricsFile(run_dir / "metrics.jsonl"), *callbacks]
    if config.tracking.tensorboard:
        all_callbacks.append(TrackerCallback(TensorBoardTracker(run_dir / "tb")))

    def emit(hook: str, event: Any) -> None:
        for callback in all_callbacks:
            getattr(callback, hook)(event)

    forward = maybe_compile(model, tcfg.compile, device, lambda msg: print(msg))
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum_steps * config.model.block_size

    def state_dict(iteration: int, wall_s: float) -> dict[str, Any]:
        return {
            "iter": iteration,
            "best_val_loss": None if math.isinf(best_val) else best_val,
            "best_iter": best_iter,
            "wall_s": wall_s,
            "rng": ckpt.capture_rng_state(),
            "data_cursor": ckpt.encode_tensor(train_batches.state()),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "model": config.model.model_dump(mode="json"),
            "tokenizer": tokenizer.kind,
            "dataset_source_hash": dataset_info["source_hash"],
        }

    def save(kind: str, iteration: int, wall_s: float) -> None:
        path = ckpt.save_checkpoint(
            run_dir / "checkpoints" / kind,
            model=model,
            optimizer=optimizer if kind == "last" else None,
            state=state_dict(iteration, wall_s),
            config_toml=config_toml,
            tokenizer_dir=tokenizer_dir,
        )
        emit("on_checkpoint", CheckpointEvent(kind, iteration, path))

    emit(
        "on_train_start",
        RunStart(
            run_dir,
            start_iter,
            tcfg.max_iters,
            model.num_params(),
            str(device),
            str(precision.dtype).removeprefix("torch."),
            config.model_dump(mode="json"),
        ),
    )

    # --- the loop -----------------------------------------------------------------------------
    session_start = time.perf_counter()
    window_start, window_steps = session_start, 0
    tokens_per_s = 0.0
    iteration = start_iter
    running_loss = torch.zeros((), device=device)
    with stop_on_signals() as stop:
        if iteration == 0 and tcfg.max_iters > 0:
            losses = estimate_loss(forward, eval_splits, tcfg.eval_iters, precision, tcfg.seed)
            emit(
                "on_eval",
                EvalEvent(
                    0,
                    losses["train"],
                    losses["val"],
                    learning_rate_at(0, tcfg),
                    0.0,
                    best_val,
                    False,
                ),
            )
        while iteration < tcfg.max_iters:
            lr = learning_rate_at(iteration, tcfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            running_loss.zero_()
            for _ in range(tcfg.grad_accum_steps):
                x, y = train_batches.next_batch()  # a fresh micro-batch every time
                with precision.autocast():
                    _, loss = forward(x, y)
                assert loss is not None
                loss = loss / tcfg.grad_accum_steps
                running_loss += loss.detach()
                scaler.scale(loss).backward()
            if tcfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            iteration += 1
            window_steps += 1

            done = iteration == tcfg.max_iters
            if iteration % tcfg.log_interval == 0 or done:
                step_loss = running_loss.item()  # the only host sync between evaluations
                now = time.perf_counter()
                tokens_per_s = window_steps * tokens_per_step / max(now - window_start, 1e-9)
                window_start, window_steps = now, 0
                emit("on_log", LogEvent(iteration, step_loss, lr, tokens_per_s))
            if iteration % tcfg.eval_interval == 0 or done:
                losses = estimate_loss(
                    forward, eval_splits, tcfg.eval_iters, precision, tcfg.seed + iteration
                )
                is_best = losses["val"] < best_val
                if is_best:
                    best_val, best_iter = losses["val"], iteration
                wall = wall_before + time.perf_counter() - session_start
                if is_best:
                    save("best", iteration, wall)
                emit(
                    "on_eval",
                    EvalEvent(
                        iteration,
                        losses["train"],
                        losses["val"],
                        lr,
                        tokens_per_s,
                        best_val,
                        is_best,
                    ),
                )
            if iteration % tcfg.checkpoint_interval == 0 or done or stop.is_set():
                save("last", iteration, wall_before + time.perf_counter() - session_start)
            if window_steps == 0:
                # Evaluation and saving are not training throughput: restart the clock after them.
                window_start = time.perf_counter()
            if stop.is_set() and not done:
                emit("on_train_end", {"interrupted": True, "iters": iteration})
                raise TrainingInterrupted(
                    f"interrupted at iter {iteration}; saved {last_dir} — run the same command "
                    f"again to resume"
                )

    wall_s = wall_before + time.perf_counter() - session_start
    session_iters = tcfg.max_iters - start_iter
    summary = {
        "best_val_loss": None if math.isinf(best_val) else best_val,
        "best_iter": best_iter,
        "iters": iteration,
        "wall_s": wall_s,
        "tokens_per_s": session_iters
        * tokens_per_step
        / max(time.perf_counter() - session_start, 1e-9),
        "num_params": model.num_params(),
        "device": str(device),
        "dtype": str(precision.dtype).removeprefix("torch."),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    emit("on_train_end", summary)
    return TrainResult(run_dir, summary)
