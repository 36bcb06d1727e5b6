"""Generation throughput with and without the KV cache, on CPU.

    .venv/bin/python benchmarks/bench_generate.py [--new-tokens 512] [--threads N]

A randomly initialised 6-layer, 384-dim, 6-head GPT at block size 256 (vocabulary 100) generates
512 greedy tokens from a 16-token prompt, so more than half of them lie past the block size:

- `no_cache`: nanoGPT's loop (`GPT.generate`), re-running the last <= 256 tokens every step.
- `kv_cache`: `BatchDecoder` with its default sliding window (drops block_size/4 tokens, then one
  re-prefill, whenever the context fills).
- `kv_cache_shift1`: the cache with `shift=1`, i.e. exactly nanoGPT's crop; it must re-prefill on
  every step past the block size, so it is only faster up to there.

Prints one JSON object; `speedup` is kv_cache over no_cache tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ml_playground.config.schema import ModelConfig
from ml_playground.generate.decode import BatchDecoder
from ml_playground.generate.sampling import SamplingParams
from ml_playground.model.gpt import GPT


def cached(model: GPT, prompt: list[int], new_tokens: int, shift: int | None) -> list[int]:
    decoder = BatchDecoder(
        model, [prompt], SamplingParams(temperature=0.0), new_tokens, shift=shift
    )
    tokens = []
    while not decoder.done:
        tokens += [step.token for step in decoder.step()]
    return tokens


def timed(run: object) -> tuple[float, list[int]]:
    assert callable(run)
    start = time.perf_counter()
    tokens: list[int] = run()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=100)
    model = GPT(config).eval()
    prompt = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens

    def no_cache() -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), n, temperature=0.0)
        return list(out[0, len(prompt) :].tolist())

    cached(model, prompt, 8, None)  # warm-up
    results = {}
    tokens = {}
    for name, run in [
        ("no_cache", no_cache),
        ("kv_cache", lambda: cached(model, prompt, n, None)),
        ("kv_cache_shift1", lambda: cached(model, prompt, n, 1)),
    ]:
        seconds, tokens[name] = timed(run)
        results[name] = {"seconds": round(seconds, 3), "tokens_per_s": round(n / seconds, 1)}
    speedup = results["kv_cache"]["tokens_per_s"] / results["no_cache"]["tokens_per_s"]
    report = {
        "model": {"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 256, "vocab_size": 100},
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "new_tokens": n,
        "prompt_tokens": len(prompt),
        **results,
        "speedup": round(speedup, 2),
        "speedup_shift1": round(
            results["kv_cache_shift1"]["tokens_per_s"] / results["no_cache"]["tokens_per_s"], 2
        ),
        # With shift=1 the cache computes nanoGPT's tokens exactly.
        "shift1_tokens_equal_no_cache": tokens["kv_cache_shift1"] == tokens["no_cache"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
