"""Shared fixtures: a tiny corpus and experiment that every layer can train on in seconds."""

from __future__ import annotations

import codecs
import locale
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from ml_playground.config.schema import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
set_hypothesis_home_dir(REPO / ".cache" / "hypothesis")  # its caches, not ./.hypothesis
settings.register_profile(
    "repo", database=DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis" / "examples"))
)
settings.load_profile("repo")
torch.set_num_threads(1)

WORDS = [
    "the",
    "king",
    "queen",
    "speak",
    "now",
    "my",
    "lord",
    "good",
    "night",
    "what",
    "say",
    "you",
    "to",
    "me",
    "and",
    "thou",
    "art",
]


def write_corpus(path: Path, n_lines: int = 400, seed: int = 0) -> Path:
    """A few KB of play-like text: names, short lines, punctuation (deterministic)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        speaker = rng.choice(["KING", "QUEEN", "LORD"])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        lines.append(f"{speaker}.\n{words.capitalize()}{rng.choice('.!?,')}\n")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


TINY_EXPERIMENT = """
description = "tiny test experiment"
[data]
corpus = "file"
path = "{corpus}"
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
[train]
batch_size = 4
max_iters = 20
warmup_iters = 5
eval_interval = 10
eval_iters = 2
log_interval = 5
checkpoint_interval = 10
device = "cpu"
[sample]
prompt = "KING."
max_new_tokens = 20
[tracking]
tensorboard = false
"""


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def tiny_experiment(tmp_path: Path, corpus_file: Path) -> Path:
    """A TOML experiment file named `tiny` using the tiny corpus."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_EXPERIMENT.format(corpus=corpus_file.as_posix()), encoding="utf-8")
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def make_config(tiny_experiment: Path) -> Callable[..., ExperimentConfig]:
    """`make_config("train.max_iters=4", ...)` → a resolved tiny ExperimentConfig."""
    from ml_playground.config.loading import resolve_config

    def build(*overrides: str) -> ExperimentConfig:
        return resolve_config(str(tiny_experiment), list(overrides))

    return build


@contextmanager
def ascii_locale() -> Iterator[None]:
    """The C locale, whose encoding is ASCII: a machine whose locale is not UTF-8.

    A file opened without an explicit encoding is then read and written as ASCII, so a config,
    checkpoint or preset with an umlaut in it (the German presets' prompts have them) breaks
    unless the code names UTF-8. In Python's UTF-8 mode (PYTHONUTF8=1) the locale does not reach
    file encodings and there is nothing to test.
    """
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode is on, so the locale cannot change file encodings")
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        if codecs.lookup(locale.getpreferredencoding(False)).name != "ascii":
            pytest.skip("the C locale's encoding is not ASCII on this platform")
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
