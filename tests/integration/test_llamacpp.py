"""llama.cpp itself (through llama-cpp-python) runs our GGUF export and agrees with us.

Not part of a plain `make test` unless llama-cpp-python is installed (it compiles llama.cpp from
source, several minutes): `make test-llamacpp` installs it and runs this file.

A tiny model is trained for a few hundred steps at a high learning rate (so its next-token
choices are decisive: an untrained model's near-ties would flip on llama.cpp's f16-table GELU,
and a barely trained one only repeats newlines, which would test little), exported as f32 GGUF,
and decoded greedily by llama.cpp; the tokens must equal `ml-playground sample --temperature 0`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import cli as run_cli
from cli_runner import ok
from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.generate.service import load_for_inference

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (`make test-llamacpp` installs it)"
)
pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

PROMPT = "KING."
NEW_TOKENS = 20
BLOCK_SIZE = 32
TOKENIZERS = {"char": "", "bpe": 'tokenizer = "bpe"\nvocab_size = 300\n'}


def cli(*args: str, cwd: Path) -> str:
    return ok(run_cli(*args, cwd=cwd, timeout=600)).stdout


@dataclass(frozen=True)
class Exported:
    root: Path
    workdir: Path
    gguf: Path
    sampled: str  # `ml-playground sample --temperature 0 --json`: the prompt and its continuation

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "runs" / "tiny" / "main" / "checkpoints" / "last"


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp(f"llamacpp-{request.param}")
    corpus = write_corpus(root / "corpus.txt")
    experiment = TINY_EXPERIMENT.format(corpus=corpus.as_posix()).replace(
        "[data]", "[data]\n" + TOKENIZERS[request.param]
    )
    (root / "tiny.toml").write_text(experiment, encoding="utf-8")
    workdir = root / "work"
    common = ["--workdir", str(workdir)]
    cli("prepare", "tiny.toml", *common, cwd=root)
    train = ["train.max_iters=300", "train.eval_interval=300", "train.learning_rate=3e-3"]
    cli("train", "tiny.toml", *train, "train.batch_size=8", *common, cwd=root)
    gguf = root / "tiny-f32.gguf"
    cli("export", "gguf", "tiny.toml", "--checkpoint", "last", "--dtype", "f32",
        "--out", str(gguf), *common, cwd=root)  # fmt: skip
    sampled = cli(
        "sample", "tiny.toml", "--checkpoint", "last", "--temperature", "0", "--json",
        "--max-new-tokens", str(NEW_TOKENS), *common, cwd=root,
    )  # fmt: skip
    return Exported(root, workdir, gguf, json.loads(sampled)["samples"][0])


def llama(path: Path) -> object:
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=BLOCK_SIZE, logits_all=True, seed=0, verbose=False
    )


def test_llama_cpp_tokenizes_the_prompt_as_we_do(exported: Exported) -> None:
    loaded = load_for_inference(exported.checkpoint, "cpu")
    model = llama(exported.gguf)
    text = "KING.\nWhat say you, my lord? Good night!"
    ids = model.tokenize(text.encode(), add_bos=False)  # type: ignore[attr-defined]
    assert ids == loaded.tokenizer.encode(text)
    assert model.detokenize(ids).decode() == text  # type: ignore[attr-defined]


def test_greedy_tokens_equal_ml_playground_sample(exported: Exported) -> None:
    loaded = load_for_inference(exported.checkpoint, "cpu")
    prompt_ids = loaded.tokenizer.encode(PROMPT)
    model = llama(exported.gguf)

    # llama.cpp, greedy: evaluate, take the argmax of the last logits, feed it back.
    tokens = list(prompt_ids)
    worst = 0.0
    model.eval(tokens)  # type: ignore[attr-defined]
    for _ in range(NEW_TOKENS):
        logits = np.asarray(model.scores[model.n_tokens - 1])  # type: ignore[attr-defined]
        with torch.no_grad():
            ours, _ = loaded.model(torch.tensor([tokens]))
        diff = np.abs(ours[0, -1].numpy() - logits[: loaded.model.vocab_size]).max()
        worst = max(worst, float(diff))
        tokens.append(int(np.argmax(logits)))
        model.eval(tokens[-1:])  # type: ignore[attr-defined]
    llama_new = tokens[len(prompt_ids) :]
    assert len(set(llama_new)) >= 2  # more than one token repeated: the comparison can fail

    # Ours: the nanoGPT reference loop and the CLI (`sample --temperature 0`).
    reference = loaded.model.generate(torch.tensor([prompt_ids]), NEW_TOKENS, temperature=0.0)
    assert llama_new == reference[0, len(prompt_ids) :].tolist()
    ours_text = exported.sampled
    eot = loaded.tokenizer.eot_id
    shown = llama_new[: llama_new.index(eot)] if eot in llama_new else llama_new  # sample stops
    assert ours_text == PROMPT + loaded.tokenizer.decode(shown)
    print(f"\nmax |logit diff| ours vs llama.cpp: {worst:.2e}\n{ours_text!r}")
    assert worst < 1e-2  # f32 weights; the rest is llama.cpp's tanh/f16 GELU


def test_create_completion_at_temperature_zero_matches(exported: Exported) -> None:
    """What a llama.cpp user runs: text in, text out, greedy."""
    model = llama(exported.gguf)
    completion = model.create_completion(  # type: ignore[attr-defined]
        PROMPT, max_tokens=NEW_TOKENS, temperature=0.0, repeat_penalty=1.0, seed=0
    )
    assert PROMPT + completion["choices"][0]["text"] == exported.sampled
