"""`prepare` throughput (MB/s) per tokenizer on a generated corpus, plus peak memory.

    .venv/bin/python benchmarks/bench_prepare.py --mb 200 --workers 2
    .venv/bin/python benchmarks/bench_prepare.py --mb 20 --kinds char bpe

The corpus is a folder of generated multilingual "documents" (German, English, code-like lines,
a little emoji) so every tokenizer sees realistic byte patterns. Each kind runs in a fresh
subprocess so its peak RSS (ru_maxrss of the process and of its workers) is its own. Prints
one JSON line per kind.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "der",
    "die",
    "das",
    "und",
    "ist",
    "nicht",
    "Bürger",
    "Größe",
    "Straße",
    "Übermut",
    "Bundestag",
    "Antrag",
    "Drucksache",
    "the",
    "king",
    "queen",
    "speak",
    "lord",
    "night",
    "what",
    "def",
    "return",
    "import",
    "class",
    "self",
    "None",
    "True",
    "for",
    "while",
    "世界",
    "🎉",
    "naïve",
    "café",
    "42",
    "3.14",
    "==",
    "!=",
    "->",
    "(x)",
    "[i]",
    "{k:",
    "v}",
]
# The generated corpus draws from a small word list, so SentencePiece cannot build much more than
# ~400 pieces from it; every trained kind gets the same 384 to keep the comparison fair.
PARAMS = {
    "char": [],
    "bpe": ["data.vocab_size=384"],
    "sentencepiece_bpe": ["data.vocab_size=384"],
    "sentencepiece_unigram": ["data.vocab_size=384"],
}


def write_corpus(folder: Path, megabytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < megabytes * 1_000_000:
        lines = []
        for _ in range(2000):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        (folder / f"doc{index:05d}.txt").write_bytes(data)
        written += len(data)
        index += 1
    return written


def run_one(kind: str, corpus: Path, workdir: Path, workers: int) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "ml_playground",
        "prepare",
        "textdir_char",
        f"data.path={corpus}",
        f"data.tokenizer={kind}",
        f"data.num_workers={workers}",
        "--force",
        "--workdir",
        str(workdir / kind),
        *PARAMS[kind],
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1:]}
    info = json.loads((workdir / kind / "datasets" / "textdir_char" / "dataset.json").read_text())
    return {
        "kind": kind,
        "mb": round(info["source_bytes"] / 1e6, 1),
        "seconds": round(seconds, 1),
        "mb_per_s": round(info["source_bytes"] / 1e6 / seconds, 2),
        "tokens": info["train_tokens"] + info["val_tokens"],
        "vocab_size": info["vocab_size"],
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
        "workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kinds", nargs="*", default=list(PARAMS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(corpus, args.mb)
        for kind in args.kinds:
            print(json.dumps(run_one(kind, corpus, Path(tmp) / "work", args.workers)), flush=True)


if __name__ == "__main__":
    main()
