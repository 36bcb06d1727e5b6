"""`ml-playground serve` under load: N concurrent clients for a fixed time on loopback.

Run by hand (not collected by pytest):

    .venv/bin/python benchmarks/bench_serve.py --clients 8 --seconds 10
    .venv/bin/python benchmarks/bench_serve.py --threads 1 --checkpoint \
        runs/shakespeare_char/main/checkpoints/best

Starts the server in a subprocess (`python -m ml_playground serve CHECKPOINT --port 0`), on a
tiny random-init checkpoint unless `--checkpoint` names one. Every client loops for `--seconds`,
alternating plain and streamed completions, and checks each response: status 200, the OpenAI
shape, `max_tokens` tokens in `usage`, and for streams every event `data: {json}` ending in
`data: [DONE]`. Prints requests/s, p50/p99 latency, generated tokens/s and how many responses
were well formed, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig, ModelConfig
from ml_playground.data.tokenizers import CharTokenizer
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?:;'\n"))


def tiny_checkpoint(directory: Path, block_size: int) -> Path:
    """An untrained 2-layer, 64-dim GPT with a char tokenizer."""
    torch.manual_seed(0)
    model = ModelConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=block_size, vocab_size=len(CHARS)
    )
    CharTokenizer(CHARS).save(directory / "tokenizer")
    return save_checkpoint(
        directory / "bench",
        model=GPT(model),
        optimizer=None,
        state={"iter": 0, "best_val_loss": None},
        config_toml=config_to_toml(ExperimentConfig(name="bench", model=model)),
        tokenizer_dir=directory / "tokenizer",
    )


def start_server(
    checkpoint: Path, extra: list[str], log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "ml_playground", "serve", str(checkpoint), "--port", "0"]
    with log.open("w") as sink:
        process = subprocess.Popen(command + extra, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}:\n{log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("serving ") and " on http://" in line:
                url = line.split(" on ", 1)[1].split("/ ", 1)[0]
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        return process, url
                except httpx.TransportError:
                    pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"serve did not come up:\n{log.read_text()}")


def well_formed(response: httpx.Response, stream: bool, max_tokens: int) -> bool:
    """Whether a response is a complete, valid completion of `max_tokens` tokens."""
    if response.status_code != 200:
        return False
    try:
        if not stream:
            body = response.json()
            choice = body["choices"][0]
            return bool(
                body["object"] == "text_completion"
                and choice["finish_reason"] in ("stop", "length")
                and isinstance(choice["text"], str)
                and body["usage"]["completion_tokens"] == max_tokens
            )
        events = response.text.split("\n\n")
        if events[-2:] != ["data: [DONE]", ""] or not all(
            e.startswith("data: ") for e in events[:-1]
        ):
            return False
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
        return bool(
            finishes[-1] in ("stop", "length")
            and all(chunk["object"] == "text_completion" for chunk in chunks)
            and chunks[-1]["usage"]["completion_tokens"] == max_tokens
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return False


async def client(
    url: str,
    index: int,
    args: argparse.Namespace,
    deadline: float,
    results: list[tuple[float, bool]],
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        request = 0
        while time.perf_counter() < deadline:
            stream = (index + request) % 2 == 1
            body: dict[str, Any] = {
                "prompt": "KING.",
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
                "seed": index * 100_000 + request,
                "stream": stream,
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            started = time.perf_counter()
            response = await http.post("/v1/completions", json=body)
            results.append(
                (time.perf_counter() - started, well_formed(response, stream, args.max_tokens))
            )
            request += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint (default: tiny)")
    parser.add_argument("--block-size", type=int, default=64, help="of the tiny checkpoint")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server")
    parser.add_argument(
        "serve_args", nargs="*", help="passed to serve, e.g. serve.max_concurrency=2"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tiny_checkpoint(Path(tmp), args.block_size)
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        process, url = start_server(checkpoint, args.serve_args, Path(tmp) / "serve.log")
        try:
            results: list[tuple[float, bool]] = []
            started = time.perf_counter()
            deadline = started + args.seconds

            async def run_all() -> None:
                await asyncio.gather(
                    *(client(url, i, args, deadline, results) for i in range(args.clients))
                )

            asyncio.run(run_all())
            wall = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(timeout=30)

    latencies = [latency for latency, _ in results]
    good = sum(ok for _, ok in results)
    report: dict[str, Any] = {
        "clients": args.clients,
        "seconds": round(wall, 2),
        "max_tokens": args.max_tokens,
        "requests": len(results),
        "well_formed": good,
        "requests_per_s": round(len(results) / wall, 2),
        "tokens_per_s": round(len(results) * args.max_tokens / wall, 1),
        "p50_latency_s": round(percentile(latencies, 0.50), 3),
        "p99_latency_s": round(percentile(latencies, 0.99), 3),
    }
    print(
        f"{report['requests']} requests from {args.clients} clients in {wall:.1f} s: "
        f"{report['requests_per_s']} req/s, {report['tokens_per_s']} tok/s, "
        f"p50 {report['p50_latency_s']} s, p99 {report['p99_latency_s']} s, "
        f"well formed {good}/{len(results)}"
    )
    print(json.dumps(report))
    if good != len(results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
