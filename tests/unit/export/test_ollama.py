"""`export ollama`: GGUF + Modelfile + README + SHA256SUMS that `ollama create` can use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest
from export_fixtures import BLOCK_SIZE, make_checkpoint

from ml_playground.config.schema import SampleConfig
from ml_playground.export.common import ExportError
from ml_playground.export.ollama import export_ollama, modelfile, ollama_model_name
from ml_playground.generate.service import load_for_inference

SAMPLE = {
    "prompt": "KING.",
    "temperature": 0.6,
    "top_k": 40,
    "top_p": 0.95,
    "repetition_penalty": 1.1,
    "stop": ["\n\n", "QUEEN."],
    "max_new_tokens": 77,
}


def test_directory_holds_model_modelfile_readme_and_checksums(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", "bpe", sample=SAMPLE)
    loaded = load_for_inference(checkpoint, "cpu")
    out = tmp_path / "ollama"
    report = export_ollama(loaded, out, "tiny", "q8_0", loaded.checkpoint.config.sample, False)
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile",
        "README.md",
        "SHA256SUMS",
        "tiny-q8_0.gguf",
    ]
    assert {path.name: size for path, size in report.files}["tiny-q8_0.gguf"] > 0
    model_file = (out / "Modelfile").read_text()
    lines = model_file.splitlines()
    assert "FROM ./tiny-q8_0.gguf" in lines
    for expected in (
        "PARAMETER temperature 0.6",
        "PARAMETER top_k 40",
        "PARAMETER top_p 0.95",
        "PARAMETER repeat_penalty 1.1",
        f"PARAMETER num_ctx {BLOCK_SIZE}",
        "PARAMETER num_predict 77",
        'PARAMETER stop "QUEEN."',
    ):
        assert expected in lines, expected
    assert 'PARAMETER stop """\n\n"""' in model_file  # a newline needs triple quotes
    readme = (out / "README.md").read_text()
    assert "ollama create tiny -f Modelfile" in readme
    assert 'ollama run tiny "KING."' in readme
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 3
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    reader = gguf.GGUFReader(str(out / "tiny-q8_0.gguf"))
    assert reader.fields["general.architecture"].contents() == "gpt2"
    assert reader.fields["general.sampling.temp"].contents() == pytest.approx(0.6)
    assert any("checksums: 3 files match" in check for check in report.checks)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    loaded = load_for_inference(checkpoint, "cpu")
    sample = loaded.checkpoint.config.sample
    export_ollama(loaded, tmp_path / "o", "tiny", "f16", sample, False)
    with pytest.raises(ExportError, match="--force"):
        export_ollama(loaded, tmp_path / "o", "tiny", "f32", sample, False)
    export_ollama(loaded, tmp_path / "o", "tiny", "f32", sample, True)
    assert sorted(p.suffix for p in (tmp_path / "o").glob("*.gguf")) == [".gguf"]
    assert (tmp_path / "o" / "tiny-f32.gguf").is_file()


def test_greedy_and_no_top_k_leave_those_parameters_out() -> None:
    text = modelfile("m.gguf", SampleConfig(temperature=0, top_k=0), 64)
    assert "PARAMETER temperature 0" in text.splitlines()
    assert "top_k" not in text
    assert "top_p" not in text
    assert "stop" not in text


def test_a_stop_string_a_modelfile_cannot_quote_is_an_error() -> None:
    with pytest.raises(ExportError, match="cannot quote"):
        modelfile("m.gguf", SampleConfig(stop=['say """hi"""']), 64)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shakespeare_char", "shakespeare_char"),
        ("My Model!", "my-model"),
        ("---", "ml-playground-model"),
    ],
)
def test_model_names_ollama_accepts(name: str, expected: str) -> None:
    assert ollama_model_name(name) == expected
