"""The training loop, readable top to bottom.

    setup:   (torchrun group) → dataset → tokenizer → model → optimizer → EMA
             → resume from checkpoints/last
    loop:    lr schedule → grad_accum distinct micro-batches (DDP syncs only on the last)
             → NaN/Inf guard → clip → step → EMA update
             every log_interval: progress, tokens/s, MFU
             every eval_interval: train/val loss (EMA weights when enabled), `best`, early stop
             every sample_interval: a sample to samples/ and the trackers
             every checkpoint_interval, at the end, on SIGINT/SIGTERM: `last`
    finish:  summary.json

Resume is exact: the checkpoint carries the optimizer, the EMA, every RNG state and the data
cursor, and evaluation and sampling draw from their own generators, so N steps + resume + N
steps equals 2N steps straight. SIGINT/SIGTERM finish the current step, save `last`, and raise
`TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

from ml_playground.analysis.samples import sample_metrics_writer
from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.images import record_tokens
from ml_playground.data.loader import IGNORE_INDEX, TokenBatches
from ml_playground.data.prepare import (
    dataset_dir,
    dataset_settings,
    mask_files,
    require_dataset,
    split_files,
)
from ml_playground.data.tokenizers import Tokenizer, load_tokenizer
from ml_playground.errors import CheckpointError, DataError, MLPlaygroundError, TrainingError
from ml_playground.fsutil import recover_dir
from ml_playground.generate.sampling import SamplingParams, generate_tokens
from ml_playground.model.gpt import GPT
from ml_playground.tracking.mlflow import RUN_ID_FILE, MLflowTracker, default_tracking_uri
from ml_playground.tracking.tensorboard import TensorBoardTracker
from ml_playground.train import checkpoint as ckpt
from ml_playground.train.callbacks import (
    Callback,
    CheckpointEvent,
    EarlyStopping,
    EvalEvent,
    LogEvent,
    MetricsFile,
    RunStart,
    SampleEvent,
    SampleWriter,
    TrackerCallback,
    TrainControl,
)
from ml_playground.train.device import Precision, peak_flops, resolve_device, resolve_dtype
from ml_playground.train.distributed import DistContext, init_distributed, shutdown_distributed
from ml_playground.train.ema import EMA
from ml_playground.train.optim import (
    build_optimizer,
    learning_rate_at,
    set_learning_rate,
    skips_on_device,
    step_unless_bad,
)

RUN_OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "tb",
    "config.toml",
    "samples",
    RUN_ID_FILE,
)


class TrainingInterrupted(MLPlaygroundError):
    """Training stopped on SIGINT/SIGTERM after saving `last`; the CLI exits 130."""


class ModelAdapter(Protocol):
    """The seam for a model other than our GPT: how to build it, when a checkpoint may resume
    it, and how its weights go into and come out of a checkpoint directory.

    `build` returns an `nn.Module` with GPT's interface (`forward(idx, targets=None)` →
    `(logits, loss)`, `block_size`, `num_params()`, `flops_per_token()`, ...), so the loop,
    its callbacks and sampling stay unchanged; `ml_playground.finetune` wraps an HF model so.
    """

    def build(self, config: ExperimentConfig, device: torch.device) -> GPT: ...

    def resume_mismatch(self, saved: ExperimentConfig, config: ExperimentConfig) -> str | None:
        """The config section (e.g. "[model]") that differs from the checkpoint's, or None."""
        ...

    def save_weights(self, model: GPT, folder: Path) -> None: ...

    def load_weights(self, checkpoint: ckpt.Checkpoint, model: GPT) -> None: ...


class GPTAdapter:
    """The default model: our GPT from [model], saved as `model.safetensors`."""

    def build(self, config: ExperimentConfig, device: torch.device) -> GPT:
        if config.hf.model is not None:
            raise MLPlaygroundError(
                f"{config.name} fine-tunes a Hugging Face model (hf.model is set); run "
                f"`ml-playground finetune {config.name}` instead of train"
            )
        return GPT(config.model).to(device)

    def resume_mismatch(self, saved: ExperimentConfig, config: ExperimentConfig) -> str | None:
        return None if saved.model == config.model else "[model]"

    def save_weights(self, model: GPT, folder: Path) -> None:
        save_model(model, str(folder / "model.safetensors"))

    def load_weights(self, checkpoint: ckpt.Checkpoint, model: GPT) -> None:
        ckpt.load_weights(checkpoint, model)


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


def compile_blocker(device: torch.device) -> str | None:
    """Why `torch.compile` cannot work here, or None when it can."""
    if device.type == "mps":
        return "torch.compile is not supported on MPS"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs Triton, which is not installed"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (c++, g++ or clang++)"
    return None


def maybe_compile(
    model: nn.Module, enabled: bool, device: torch.device, say: Any, mode: str = "default"
) -> nn.Module:
    """`torch.compile` where it can work; elsewhere a one-line notice and the eager model."""
    if not enabled:
        return model
    reason = compile_blocker(device)
    if reason is not None:
        say(f"notice: train.compile is off ({reason}); training eagerly")
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)  # type: ignore[return-value]


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory of the run: CUDA tensors' high-water mark (the caching allocator's
    `max_memory_allocated`, reset when training starts), elsewhere the process's peak resident
    set size (everything the process ever held, weights and data included); None on Windows."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


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
    dist: DistContext | None = None,
) -> dict[str, float]:
    """Mean loss per scored target over `eval_iters` batches per split, drawn from a generator
    seeded by `seed`.

    Each batch's mean loss is weighed by its scored targets (all of them, or a loss mask's
    response tokens), so a batch that is mostly prompt does not count as much as one that is
    all response. Restoring each split's cursor afterwards keeps training batches unaffected by
    evaluation. Under DDP each rank scores its slice of the same global batches.
    """
    model.eval()
    losses: dict[str, float] = {}
    for name, batches in splits.items():
        saved = batches.state()
        batches.generator.manual_seed(seed)
        total = torch.zeros((), device=batches.device)
        scored = torch.zeros((), device=batches.device)
        for _ in range(eval_iters):
            x, y = batches.next_batch()
            with precision.autocast():
                _, loss = model(x, y)
            assert loss is not None
            count = (y != IGNORE_INDEX).sum()
            total += loss.float() * count
            scored += count
        batches.load_state(saved)
        if dist is not None:  # the same ratio as one process would compute
            total, scored = dist.mean(total), dist.mean(scored)
        losses[name] = float((total / scored.clamp(min=1)).item())
    model.train()
    return losses


def generate_sample(
    model: GPT, config: ExperimentConfig, tokenizer: Tokenizer, device: torch.device, step: int
) -> str:
    """A sample of the [sample] prompt, from its own generator (training RNG stays untouched)."""
    settings = config.sample
    prompt_ids = tokenizer.encode(settings.prompt)
    generator = torch.Generator(device=device).manual_seed(settings.seed + step)
    params = SamplingParams(settings.temperature, settings.top_k or None, settings.top_p)
    context = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    tokens = [
        int(t[0, 0])
        for t in generate_tokens(model, context, settings.max_new_tokens, params, generator)
    ]
    return settings.prompt + tokenizer.decode(tokens)


def builtin_callbacks(config: ExperimentConfig, workdir: Path, run_dir: Path) -> list[Callback]:
    """What every run records: metrics.jsonl, samples/, TensorBoard/MLflow, early stopping."""
    callbacks: list[Callback] = [
        MetricsFile(run_dir / "metrics.jsonl"),
        SampleWriter(
            run_dir / "samples",
            sample_metrics_writer(dataset_dir(workdir, config.name), config.sample.prompt)
            if config.train.sample_interval
            else None,
        ),
    ]
    if config.tracking.tensorboard:
        callbacks.append(TrackerCallback(TensorBoardTracker(run_dir / "tb")))
    if config.tracking.mlflow:
        id_file = run_dir / RUN_ID_FILE
        tracker = MLflowTracker(
            tracking_uri=default_tracking_uri(workdir, config.tracking.mlflow_uri),
            experiment=config.tracking.mlflow_experiment or config.name,
            run_name=config.train.run_name,
            artifact_dir=workdir / "mlartifacts",
            run_id=id_file.read_text("utf-8").strip() if id_file.is_file() else None,
            parent_run_id=config.tracking.mlflow_parent_run_id,
        )
        id_file.write_text(tracker.run_id + "\n", "utf-8")
        callbacks.append(TrackerCallback(tracker))
    if config.train.early_stop_patience is not None:
        callbacks.append(
            EarlyStopping(config.train.early_stop_patience, config.train.eval_interval)
        )
    return callbacks


def drop_metrics_after(path: Path, iteration: int) -> None:
    """Forget evaluations logged after `last` was saved (a crash lost those steps).

    They are about to be recomputed, identically, by the resumed run; keeping them would leave
    two rows for the same iteration in `metrics.jsonl`.
    """
    if not path.is_file():
        return
    lines = path.read_text("utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["iter"] <= iteration]
    if len(kept) != len(lines):
        path.write_text("".join(kept), "utf-8")


def clear_run_outputs(run_dir: Path) -> None:
    """--no-resume: remove what a previous run wrote, so nothing mixes into the new one."""
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def train(
    config: ExperimentConfig,
    workdir: Path,
    *,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    adapter: ModelAdapter | None = None,
) -> TrainResult:
    """Train `config` in `runs/<name>/<run_name>/`, resuming from its `last` checkpoint if any.

    Under torchrun every rank calls this; rank 0 alone writes files and runs `callbacks`.
    `adapter` swaps in another model (default: our GPT; `ml_playground.finetune`: HF + LoRA).
    """
    dist = init_distributed(resolve_device(config.train.device).type)
    try:
        return _train(config, workdir, resume, callbacks, dist, adapter or GPTAdapter())
    finally:
        shutdown_distributed(dist)


def _train(
    config: ExperimentConfig,
    workdir: Path,
    resume: bool,
    user_callbacks: Sequence[Callback],
    dist: DistContext,
    adapter: ModelAdapter,
) -> TrainResult:
    tcfg = config.train
    run_dir = run_dir_for(workdir, config)
    data_dir, dataset_info = require_dataset(workdir, config.name)
    prepared_with = dataset_info.get("settings", {})
    changed = sorted(
        key
        for key, value in dataset_settings(config.data).items()
        if prepared_with.get(key) != value
    )
    if changed:
        raise DataError(
            f"{data_dir} was prepared with other [data] settings ({', '.join(changed)}); run "
            f"`ml-playground prepare {config.name}` again"
        )
    response_only = config.data.prompt_field is not None and not tcfg.train_on_prompt
    if response_only and "loss_mask" not in dataset_info:
        raise DataError(
            f"{data_dir} was prepared before prompt/response pairs got loss masks; run "
            f"`ml-playground prepare {config.name}` again (or set train.train_on_prompt=true)"
        )
    tokenizer_dir = data_dir / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir)
    config = with_vocab_size(config, tokenizer.vocab_size)

    # --- model, optimizer, precision
    device = dist.place(resolve_device(tcfg.device))
    precision = Precision(device, resolve_dtype(tcfg.dtype, device))
    seed_everything(tcfg.seed)
    model = adapter.build(config, device)
    model.activation_checkpointing = tcfg.activation_checkpointing
    if dist.enabled:
        torch.manual_seed(tcfg.seed + dist.rank)  # same init everywhere, own dropout per rank
    optimizer = build_optimizer(model, tcfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    ema = EMA(model, tcfg.ema_decay) if tcfg.ema_decay is not None else None

    def batches(split: str, seed: int) -> TokenBatches:
        return TokenBatches(
            split_files(data_dir, dataset_info, split),
            dataset_info["dtype"],
            config.model.block_size,
            tcfg.batch_size,
            device,
            seed=seed,
            rank=dist.rank,
            world_size=dist.world_size,
            align=record_tokens(dataset_info),
            # Pairs: targets in the prompt are IGNORE_INDEX, unless train.train_on_prompt.
            mask=mask_files(data_dir, dataset_info, split) if response_only else None,
        )

    train_batches = batches("train", tcfg.seed)
    eval_splits = {"train": batches("train", tcfg.seed + 1), "val": batches("val", tcfg.seed + 2)}

    # --- resume, or start over
    last_dir = run_dir / "checkpoints" / "last"
    start_iter, best_val, best_iter, wall_before, bad_steps = 0, math.inf, -1, 0.0, 0
    if not resume and dist.is_main:
        clear_run_outputs(run_dir)
    dist.barrier()
    if resume and dist.is_main:
        recover_dir(last_dir)
    dist.barrier()
    resumed = resume and last_dir.exists()
    if resumed:
        last = ckpt.open_checkpoint(last_dir)
        if (section := adapter.resume_mismatch(last.config, config)) is not None:
            raise CheckpointError(
                f"{last_dir} was trained with a different {section} section; use the same model "
                f"settings to resume, or pass --no-resume (or another train.run_name) to start over"
            )
        state = last.state
        start_iter = int(state["iter"])
        if start_iter > tcfg.max_iters:
            raise TrainingError(
                f"{last_dir} is at iter {start_iter}, past train.max_iters={tcfg.max_iters}; "
                f"raise train.max_iters to continue, or pass --no-resume to start over"
            )
        if start_iter == tcfg.max_iters and (run_dir / "summary.json").is_file():
            # Nothing left to train: report the finished run instead of rewriting it.
            summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
            return TrainResult(run_dir, summary)
        adapter.load_weights(last, model)
        ckpt.load_optimizer(last, optimizer)
        best_val = float(state["best_val_loss"]) if state["best_val_loss"] is not None else math.inf
        best_iter = int(state["best_iter"])
        wall_before = float(state.get("wall_s", 0.0))
        bad_steps = int(state.get("bad_steps", 0))
        rng_by_rank = state.get("rng_by_rank") or [state["rng"]]
        if len(rng_by_rank) != dist.world_size:
            raise CheckpointError(
                f"{last_dir} was written by {len(rng_by_rank)} process(es); resume it with the "
                f"same number (torchrun --nproc_per_node={len(rng_by_rank)})"
            )
        ckpt.restore_rng_state(rng_by_rank[dist.rank])
        train_batches.load_state(ckpt.decode_tensor(state["data_cursor"]))
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        if ema is not None:
            if not (last.path / "ema.safetensors").is_file():
                raise CheckpointError(
                    f"{last_dir} has no EMA weights but train.ema_decay is set; resume without "
                    f"train.ema_decay, or pass --no-resume"
                )
            ema.load_state_dict(ckpt.load_ema_state(last), int(state.get("ema_updates", 0)))

    # --- what records the run (rank 0 only)
    config_toml = config_to_toml(config)
    all_callbacks: list[Callback] = []
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml, "utf-8")
        if resumed:
            drop_metrics_after(run_dir / "metrics.jsonl", start_iter)
        all_callbacks = [*builtin_callbacks(config, workdir, run_dir), *user_callbacks]
    control = TrainControl()

    def emit(hook: str, event: Any) -> None:
        for callback in all_callbacks:
            getattr(callback, hook)(event)

    # --- wrappers: DDP for gradient averaging, torch.compile for speed
    wrapped: nn.Module = model
    if dist.enabled:
        ddp_device = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)
    forward = maybe_compile(
        wrapped, tcfg.compile, device, lambda msg: print(msg), tcfg.compile_mode
    )
    world_tokens_per_step = (
        tcfg.batch_size * tcfg.grad_accum_steps * config.model.block_size * dist.world_size
    )
    peak = peak_flops(device, precision.dtype)
    flops_per_token = model.flops_per_token()

    # The NaN/Inf guard. Where the optimizer can take the decision on the device (fused AdamW,
    # Muon), a bad step is skipped there and counted in `bad_count`; the host folds the count
    # into `bad_steps` (and enforces max_bad_steps) only when it logs or saves, so the hot loop
    # never waits for the device. Elsewhere (GradScaler, EMA, unfused AdamW) it checks each step.
    on_device_guard = skips_on_device(optimizer) and not scaler.is_enabled() and ema is None
    bad_count = torch.zeros((), device=device)
    last_bad_iter = torch.full((), -1.0, device=device)
    good_norm = torch.full((), math.nan, device=device)

    def too_many_bad_steps(last_at: int) -> TrainingError:
        return TrainingError(
            f"loss or gradients were NaN/Inf in {bad_steps} steps (last at iter "
            f"{last_at}), more than train.max_bad_steps={tcfg.max_bad_steps}; "
            f"lower train.learning_rate, raise train.warmup_iters, or use "
            f"train.dtype=float32. {last_dir} holds the last good state"
        )

    def count_bad_steps() -> None:
        """Fold the device-side count of skipped steps into `bad_steps` (one host sync)."""
        nonlocal bad_steps
        if not on_device_guard:
            return
        pending, last_at = (int(v) for v in torch.stack([bad_count, last_bad_iter]).tolist())
        bad_count.zero_()
        bad_steps += pending
        if bad_steps > tcfg.max_bad_steps:
            raise too_many_bad_steps(last_at)

    def state_dict(iteration: int, wall_s: float) -> dict[str, Any]:
        count_bad_steps()
        rng = ckpt.capture_rng_state()
        rng_by_rank = dist.gather_objects(rng)  # collective: every rank calls save()
        return {
            "iter": iteration,
            "best_val_loss": None if math.isinf(best_val) else best_val,
            "best_iter": best_iter,
            "wall_s": wall_s,
            "bad_steps": bad_steps,
            "ema_updates": ema.updates if ema is not None else 0,
            "rng": rng,
            "rng_by_rank": rng_by_rank if dist.enabled else None,
            "world_size": dist.world_size,
            "data_cursor": ckpt.encode_tensor(train_batches.state()),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "model": config.model.model_dump(mode="json"),
            "tokenizer": tokenizer.kind,
            "dataset_source_hash": dataset_info["source_hash"],
        }

    def save(kind: str, iteration: int, wall_s: float) -> None:
        state = state_dict(iteration, wall_s)
        if dist.is_main:
            path = ckpt.save_checkpoint(
                run_dir / "checkpoints" / kind,
                model=model,
                write_weights=lambda folder: adapter.save_weights(model, folder),
                optimizer=optimizer if kind == "last" else None,
                state=state,
                config_toml=config_toml,
                tokenizer_dir=tokenizer_dir,
                ema=ema.state_dict() if ema is not None else None,
                keep=tcfg.keep_last if kind == "last" else tcfg.keep_best,
            )
            emit("on_checkpoint", CheckpointEvent(kind, iteration, path))
        dist.barrier()

    def evaluate(step: int) -> dict[str, float]:
        def run() -> dict[str, float]:
            return estimate_loss(
                forward, eval_splits, tcfg.eval_iters, precision, tcfg.seed + step, dist
            )

        if ema is None:
            return run()
        with ema.swapped_in():
            return run()

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
            control,
            resumed,
        ),
    )

    # --- the loop
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session_start = time.perf_counter()
    window_start, window_steps = session_start, 0
    tokens_per_s, mfu, grad_norm = 0.0, None, None
    iteration = start_iter
    status, stop_reason = "finished", None
    running_loss = torch.zeros((), device=device)
    try:
        with stop_on_signals() as stop:
            if iteration == 0 and tcfg.max_iters > 0:
                losses = evaluate(0)
                emit(
                    "on_eval",
                    EvalEvent(
                        0, losses["train"], losses["val"], learning_rate_at(0, tcfg), 0.0,
                        best_val, False, best_iter,
                    ),
                )  # fmt: skip
            while iteration < tcfg.max_iters:
                lr = learning_rate_at(iteration, tcfg)
                set_learning_rate(optimizer, lr)
                running_loss.zero_()
                for micro_step in range(tcfg.grad_accum_steps):
                    x, y = train_batches.next_batch()  # a fresh micro-batch every time
                    # DDP all-reduces gradients only on the last micro-step.
                    syncing = micro_step == tcfg.grad_accum_steps - 1
                    sync_context = (
                        wrapped.no_sync()  # type: ignore[operator]
                        if dist.enabled and not syncing
                        else contextlib.nullcontext()
                    )
                    with sync_context, precision.autocast():
                        _, loss = forward(x, y)
                    assert loss is not None
                    loss = loss / tcfg.grad_accum_steps
                    running_loss += loss.detach()
                    with sync_context:
                        scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
                )
                # Skip the update when the loss (or, without a grad scaler, which handles
                # overflow itself, the gradient) is NaN/Inf. Every rank takes the same decision.
                bad = ~torch.isfinite(running_loss)
                if not scaler.is_enabled():
                    bad = bad | ~torch.isfinite(norm)
                bad = dist.any(bad.float())
                if on_device_guard:
                    step_unless_bad(optimizer, bad)  # no host sync; see `count_bad_steps`
                    optimizer.zero_grad(set_to_none=True)
                    bad_count += bad
                    last_bad_iter.copy_(torch.where(bad > 0, float(iteration), last_bad_iter))
                    good_norm.copy_(torch.where(bad > 0, good_norm, norm.float()))
                elif bool(bad.item()):
                    optimizer.zero_grad(set_to_none=True)
                    bad_steps += 1
                    if bad_steps > tcfg.max_bad_steps:
                        raise too_many_bad_steps(iteration)
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update()
                    grad_norm = float(norm)
                iteration += 1
                window_steps += 1

                done = iteration == tcfg.max_iters
                if iteration % tcfg.log_interval == 0 or done:
                    step_loss = float(dist.mean(running_loss).item())
                    if on_device_guard:
                        count_bad_steps()
                        norm_value = float(good_norm.item())
                        grad_norm = None if math.isnan(norm_value) else norm_value
                    now = time.perf_counter()
                    tokens_per_s = (
                        window_steps * world_tokens_per_step / max(now - window_start, 1e-9)
                    )
                    if peak is not None:
                        mfu = tokens_per_s * flops_per_token / (peak * dist.world_size)
                    window_start, window_steps = now, 0
                    emit(
                        "on_log",
                        LogEvent(iteration, step_loss, lr, tokens_per_s, grad_norm, mfu, bad_steps),
                    )
                if tcfg.sample_interval and iteration % tcfg.sample_interval == 0 and dist.is_main:
                    if ema is None:
                        text = generate_sample(model, config, tokenizer, device, iteration)
                    else:
                        with ema.swapped_in():
                            text = generate_sample(model, config, tokenizer, device, iteration)
                    emit("on_sample", SampleEvent(iteration, text))
                    window_steps = 0  # sampling is not training throughput
                if iteration % tcfg.eval_interval == 0 or done:
                    losses = evaluate(iteration)
                    is_best = losses["val"] < best_val
                    if is_best:
                        best_val, best_iter = losses["val"], iteration
                        save("best", iteration, wall_before + time.perf_counter() - session_start)
                    emit(
                        "on_eval",
                        EvalEvent(
                            iteration, losses["train"], losses["val"], lr, tokens_per_s,
                            best_val, is_best, best_iter,
                        ),
                    )  # fmt: skip
                # SIGINT/SIGTERM (any rank) and early-stop requests (rank 0's callbacks),
                # agreed on by all ranks in one all-reduce.
                signalled, early = dist.agree(
                    [stop.is_set(), control.stop_reason is not None], device
                )
                stop_requested = signalled and not done
                if early and not done:
                    stop_reason = control.stop_reason or "early stop (requested on rank 0)"
                    status = "early_stopped"
                if (
                    iteration % tcfg.checkpoint_interval == 0
                    or done
                    or stop_requested
                    or stop_reason is not None
                ):
                    save("last", iteration, wall_before + time.perf_counter() - session_start)
                if window_steps == 0:
                    # Evaluation and saving are not training throughput: restart the clock.
                    window_start = time.perf_counter()
                if stop_reason is not None:
                    break
                if stop_requested:
                    status = "interrupted"
                    emit("on_train_end", {"status": status, "iters": iteration})
                    raise TrainingInterrupted(
                        f"interrupted at iter {iteration}; saved {last_dir} — run the same "
                        f"command again to resume"
                    )
    except BaseException:
        if status != "interrupted":
            emit("on_train_end", {"status": "failed", "iters": iteration})
        raise

    session_s = time.perf_counter() - session_start
    session_iters = iteration - start_iter
    summary = {
        "best_val_loss": None if math.isinf(best_val) else best_val,
        "best_iter": best_iter,
        "iters": iteration,
        "wall_s": wall_before + session_s,
        "tokens_per_s": session_iters * world_tokens_per_step / max(session_s, 1e-9),
        "mfu": mfu,
        "num_params": model.num_params(),
        "device": str(device),
        "dtype": str(precision.dtype).removeprefix("torch."),
        "world_size": dist.world_size,
        "bad_steps": bad_steps,
        "status": status,
        "stop_reason": stop_reason,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if dist.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    emit("on_train_end", summary)
    return TrainResult(run_dir, summary)
