"""Training-step throughput and MFU for a preset's model, on synthetic tokens.

Run by hand (not collected by pytest):

    .venv/bin/python benchmarks/bench_train.py shakespeare_char --steps 50
    .venv/bin/python benchmarks/bench_train.py shakespeare_char --device cuda --dtype bfloat16 \
        --compile model.n_layer=6 model.n_embd=384 model.block_size=256 train.batch_size=64

Timing is sync-correct: the device is synchronised before the clock is read, and warmup steps
(which include torch.compile's tracing) are excluded. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ml_playground.config.loading import resolve_config
from ml_playground.model.gpt import GPT
from ml_playground.train.device import Precision, peak_flops, resolve_device, resolve_dtype
from ml_playground.train.optim import build_optimizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=84)
    args = parser.parse_args()

    config = resolve_config(args.experiment, args.overrides)
    model_cfg = config.model.model_copy(update={"vocab_size": args.vocab_size})
    device = resolve_device(args.device)
    precision = Precision(device, resolve_dtype(args.dtype, device))
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    optimizer = build_optimizer(model, config.train, device)
    forward = torch.compile(model) if args.compile else model
    batch, block = config.train.batch_size, model_cfg.block_size
    x = torch.randint(args.vocab_size, (batch, block), device=device)
    y = torch.randint(args.vocab_size, (batch, block), device=device)

    def step() -> None:
        with precision.autocast():
            _, loss = forward(x, y)
        assert loss is not None
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    tokens_per_s = args.steps * batch * block / elapsed
    peak = peak_flops(device, precision.dtype)
    mfu = tokens_per_s * model.flops_per_token() / peak if peak else None
    print(
        json.dumps(
            {
                "experiment": config.name,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else str(device),
                "dtype": str(precision.dtype).removeprefix("torch."),
                "compile": args.compile,
                "params_m": round(model.num_params() / 1e6, 2),
                "batch": batch,
                "block": block,
                "ms_per_step": round(1000 * elapsed / args.steps, 2),
                "tokens_per_s": round(tokens_per_s),
                "mfu": None if mfu is None else round(mfu, 4),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
