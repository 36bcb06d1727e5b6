"""Sample quality against a prepared dataset, text bytes per split, and the training hook."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import write_corpus
from ml_playground.analysis.samples import SampleScorer
from ml_playground.analysis.text_bytes import count_text_bytes
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset, split_files
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.train.loop import train

MakeConfig = Callable[..., ExperimentConfig]


@pytest.mark.parametrize(
    ("tokenizer", "layout"),
    [("char", "file"), ("bpe", "file"), ("char", "dir"), ("bpe", "dir")],
)
def test_recorded_split_bytes_match_the_decoded_tokens(
    make_config: MakeConfig, workdir: Path, tmp_path: Path, tokenizer: str, layout: str
) -> None:
    """One file: each document's tail is validation; a directory: whole documents are."""
    (tmp_path / "docs").mkdir()
    files = [write_corpus(tmp_path / "docs" / f"{i:02d}.txt", 30, seed=i) for i in range(12)]
    for file in files[:3]:
        file.write_text(file.read_text("utf-8") + "\nÉlan, 中文!\n", "utf-8")
    overrides = [f'data.tokenizer="{tokenizer}"'] + (["data.vocab_size=300"] * (tokenizer == "bpe"))
    if layout == "dir":
        overrides += ['data.corpus="dir"', f'data.path="{(tmp_path / "docs").as_posix()}"']
    else:
        overrides += [f'data.path="{files[0].as_posix()}"']
    config = make_config(*overrides)
    result = prepare_dataset(config.data, workdir, config.name)
    info = result.info
    assert info["split"] == ("document" if layout == "dir" else "tail")
    tokenizer_ = load_tokenizer(result.directory / "tokenizer")
    for split in ("train", "val"):
        tokens = np.concatenate(
            [
                np.fromfile(p, dtype=info["dtype"])
                for p in split_files(result.directory, info, split)
            ]
        )
        assert info[f"{split}_bytes"] == count_text_bytes(tokenizer_, tokens)
    used = files if layout == "dir" else files[:1]
    source = sum(len(file.read_text("utf-8").encode()) for file in used)
    separators = info["train_bytes"] + info["val_bytes"] - source
    # all of the text, plus the char kind's blank-line separators ("\n\n" per document)
    if tokenizer == "bpe":
        assert separators == 0  # an end-of-text token is a boundary, not text
    else:
        assert separators == 2 * len(used) * (2 if layout == "file" else 1)


@pytest.fixture
def prepared(make_config: MakeConfig, workdir: Path) -> Path:
    config = make_config()
    return prepare_dataset(config.data, workdir, config.name).directory


def test_text_copied_from_the_corpus_is_memorized_and_noise_is_not(
    prepared: Path, corpus_file: Path
) -> None:
    scorer = SampleScorer.for_dataset(prepared)
    assert scorer.ngram == 32  # char tokenizer, ASCII corpus: one byte per token
    corpus = corpus_file.read_text("utf-8")
    copied = corpus[:400]
    noise = "".join(sorted(set(corpus))) * 6  # every character, in an order the corpus never has
    rows = scorer.score([copied, noise])
    assert rows[0]["copied_ngram_fraction"] == 1.0
    assert rows[1]["copied_ngram_fraction"] == 0.0
    assert rows[0]["copied_ngram_complete"]
    assert rows[0]["copied_ngram_tokens"] == 32
    assert rows[0]["tokens"] == 400
    assert 0 < rows[0]["distinct_1"] <= 1
    assert rows[1]["longest_repeated_line_run"] >= 1


def test_older_datasets_estimate_bytes_per_token(prepared: Path) -> None:
    info_path = prepared / "dataset.json"
    info = json.loads(info_path.read_text("utf-8"))
    del info["train_bytes"], info["val_bytes"]
    info_path.write_text(json.dumps(info), "utf-8")
    assert SampleScorer.for_dataset(prepared).ngram == 32


def test_training_writes_sample_metrics_next_to_each_sample(
    make_config: MakeConfig, workdir: Path
) -> None:
    config = make_config("train.max_iters=10", "train.sample_interval=5", "train.eval_interval=5")
    prepare_dataset(config.data, workdir, config.name)
    result = train(config, workdir)
    samples = result.run_dir / "samples"
    assert sorted(p.name for p in samples.iterdir()) == [
        "iter_0000005.metrics.json",
        "iter_0000005.txt",
        "iter_0000010.metrics.json",
        "iter_0000010.txt",
    ]
    metrics = json.loads((samples / "iter_0000010.metrics.json").read_text("utf-8"))
    text = (samples / "iter_0000010.txt").read_text("utf-8")
    expected = SampleScorer.for_dataset(workdir / "datasets" / config.name).score(
        [text.removeprefix(config.sample.prompt)]
    )[0]
    assert metrics == expected
    assert metrics["tokens"] == config.sample.max_new_tokens  # the prompt is not scored
