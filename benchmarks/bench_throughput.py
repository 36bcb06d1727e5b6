"""Training throughput of the GPT-2 124M shape on synthetic tokens: tokens/s and MFU per batch.

    .venv/bin/python benchmarks/bench_throughput.py                       # H100: batch sweep
    .venv/bin/python benchmarks/bench_throughput.py --batches 12,32 --compile-mode max-autotune
    .venv/bin/python benchmarks/bench_throughput.py --preset gpt2_350m --batches 8,16,24 \
        --checkpointing both                                              # memory: OOM or not
    .venv/bin/python benchmarks/bench_throughput.py --tiny --device cpu   # smoke run, any machine

One training step is the loop's hot path: new random batch, autocast forward, backward, grad
clipping, the device-side NaN flag and an optimizer step that the flag can cancel (no host sync).
Warm-up steps (torch.compile's tracing and autotuning) are excluded; each row is the median of
`--repeats` windows of `--steps` steps, timed with CUDA events on CUDA. MFU counts the PaLM
6N + 12·L·H·Q·T training FLOPs per token against the device's dense bf16 peak (H100 SXM:
989 TFLOP/s). nanoGPT's bench.py on the same H100 (PyTorch 2.11, bf16, compile): batch 12 →
28.5 ms/iter = 431k tokens/s; batch 32 → 68.8 ms/iter = 476k tokens/s (about 41% MFU).
"""

from __future__ import annotations

import argparse
import gc
import math

import torch
from bench_common import machine, median, print_table, time_windows

from ml_playground.config.loading import resolve_config
from ml_playground.model.gpt import GPT
from ml_playground.train.device import Precision, peak_flops, resolve_device, resolve_dtype
from ml_playground.train.loop import compile_blocker
from ml_playground.train.optim import (
    build_optimizer,
    set_learning_rate,
    skips_on_device,
    step_unless_bad,
)

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
]
NANOGPT = {12: (28.5, 431_000), 32: (68.8, 476_000)}  # batch: (ms/iter, tokens/s) on one H100


def measure(
    args: argparse.Namespace, batch: int, checkpointing: bool, device: torch.device
) -> list[object]:
    """One table row: build, warm up and time a training step at `batch`."""
    overrides = [*(TINY if args.tiny else []), *args.overrides, f"train.batch_size={batch}"]
    config = resolve_config(args.preset, overrides)
    vocab = args.vocab_size if not args.tiny else 256
    model_cfg = config.model.model_copy(update={"vocab_size": vocab})
    precision = Precision(device, resolve_dtype(args.dtype, device))
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    model.activation_checkpointing = checkpointing
    optimizer = build_optimizer(model, config.train, device)
    set_learning_rate(optimizer, config.train.learning_rate)
    compiled = args.compile_mode != "off" and compile_blocker(device) is None
    forward = (
        torch.compile(model, mode=None if args.compile_mode == "default" else args.compile_mode)
        if compiled
        else model
    )
    block = model_cfg.block_size
    clip = config.train.grad_clip if config.train.grad_clip > 0 else math.inf
    on_device = skips_on_device(optimizer)

    def step() -> None:
        x = torch.randint(vocab, (batch, block), device=device)
        y = torch.randint(vocab, (batch, block), device=device)
        with precision.autocast():
            _, loss = forward(x, y)
        assert loss is not None
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(norm)).float()
        if on_device:
            step_unless_bad(optimizer, bad)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median(time_windows(step, device, args.warmup, args.steps, args.repeats))
    tokens_per_s = batch * block / seconds
    peak = peak_flops(device, precision.dtype)
    mfu = tokens_per_s * model.flops_per_token() / peak if peak else None
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    reference = NANOGPT.get(batch) if not args.tiny else None
    row: list[object] = [
        batch,
        "on" if checkpointing else "off",
        f"{1000 * seconds:.1f}",
        f"{tokens_per_s / 1000:.0f}k",
        "—" if mfu is None else f"{100 * mfu:.1f}%",
        "—" if memory is None else f"{memory:.1f}",
        "—" if reference is None else f"{reference[0]} ms, {reference[1] / 1000:.0f}k",
    ]
    return row


def measure_or_oom(
    args: argparse.Namespace, batch: int, checkpointing: bool, device: torch.device
) -> list[object]:
    """`measure`, or a row that says OOM; either way the next row starts with a clean device."""
    try:
        return measure(args, batch, checkpointing, device)
    except torch.OutOfMemoryError:
        return [batch, "on" if checkpointing else "off", "OOM", "", "", "", ""]
    finally:
        gc.collect()  # the model, optimizer and compiled graphs of this row
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    parser.add_argument("--preset", default="gpt2_124m")
    parser.add_argument("--batches", default="8,12,16,24,32", help="comma-separated batch sizes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    parser.add_argument(
        "--checkpointing",
        default="off",
        choices=["off", "on", "both"],
        help="activation checkpointing per block",
    )
    parser.add_argument("--vocab-size", type=int, default=50304, help="synthetic token range")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="windows; the median is shown")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compile)")
    parser.add_argument("--tiny", action="store_true", help="2 layers, 64 dims: a smoke run")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = [
        measure_or_oom(args, batch, checkpointing, device)
        for batch in (int(b) for b in args.batches.split(","))
        for checkpointing in modes
    ]
    print_table(
        f"bench_throughput — {args.preset}{' (tiny)' if args.tiny else ''}, synthetic tokens, "
        f"compile={args.compile_mode}, {machine()}",
        [
            "batch",
            "act. ckpt",
            "ms/iter (median)",
            "tokens/s",
            "MFU",
            "peak GiB",
            "nanoGPT (H100)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
