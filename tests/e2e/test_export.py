"""`ml-playground export hf|gguf|ollama` as a user runs it, on a freshly trained tiny run.

One module-scoped workdir is prepared and trained once (bpe tokenizer, 10 iterations); every
test exports from it in a subprocess and inspects what landed on disk.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import gguf
import pytest
import torch

from cli_runner import cli, ok
from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.generate.service import load_for_inference

pytestmark = pytest.mark.slow  # a training run plus a transformers import per export


@dataclass(frozen=True)
class Trained:
    root: Path
    workdir: Path

    @property
    def best(self) -> Path:
        return self.workdir / "runs" / "tiny" / "main" / "checkpoints" / "best"

    def export(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("export", *args, "--workdir", str(self.workdir), cwd=self.root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("export")
    corpus = write_corpus(root / "corpus.txt")
    experiment = TINY_EXPERIMENT.format(corpus=corpus.as_posix()).replace(
        "[data]", '[data]\ntokenizer = "bpe"\nvocab_size = 300'
    )
    (root / "tiny.toml").write_text(experiment, encoding="utf-8")
    workdir = root / "work"
    ok(cli("prepare", "tiny.toml", "--workdir", str(workdir), cwd=root))
    ok(cli("train", "tiny.toml", "train.max_iters=10", "--workdir", str(workdir), cwd=root))
    return Trained(root, workdir)


def test_export_hf_loads_in_transformers_with_our_logits(trained: Trained) -> None:
    transformers = pytest.importorskip("transformers")
    out = trained.root / "hf"
    result = ok(trained.export("hf", "tiny.toml", "--out", str(out)))
    assert result.stdout.strip() == str(out)
    assert "logits match ours" in result.stderr
    assert "model.safetensors" in result.stderr
    assert "KiB" in result.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    loaded = load_for_inference(trained.best, "cpu")
    ids = loaded.tokenizer.encode("KING.\nWhat say you, my lord?")
    assert tokenizer("KING.\nWhat say you, my lord?")["input_ids"] == ids
    idx = torch.tensor([ids])
    with torch.no_grad():
        assert (loaded.model(idx, idx)[0] - model(idx).logits).abs().max() < 1e-4


def test_export_refuses_to_overwrite_in_one_line_then_force_replaces(trained: Trained) -> None:
    out = trained.root / "twice.gguf"
    ok(trained.export("gguf", "tiny.toml", "--out", str(out), "--dtype", "f32"))
    again = trained.export("gguf", "tiny.toml", "--out", str(out))
    assert again.returncode == 2
    assert (
        again.stderr.strip().splitlines()[-1]
        == f"error: {out} already exists; pass --force to overwrite it"
    )
    assert "Traceback" not in again.stderr
    ok(trained.export("gguf", "tiny.toml", "--out", str(out), "--dtype", "q8_0", "--force"))
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_export_gguf_into_a_directory_names_the_file(trained: Trained) -> None:
    result = ok(trained.export("gguf", str(trained.best), "--out", "exports/", "--dtype", "f16"))
    path = trained.root / "exports" / "tiny-f16.gguf"
    assert path.is_file()
    assert result.stdout.strip() == "exports/tiny-f16.gguf"
    assert "read back with GGUFReader" in result.stderr


def test_export_ollama_from_last_checkpoint(trained: Trained) -> None:
    out = trained.root / "ollama"
    result = ok(
        trained.export(
            "ollama",
            "tiny.toml",
            "sample.temperature=0.5",
            "--checkpoint",
            "last",
            "--out",
            str(out),
        )
    )
    assert "checkpoints/last" in result.stderr
    assert "PARAMETER temperature 0.5" in (out / "Modelfile").read_text().splitlines()
    assert "ollama create tiny -f Modelfile" in result.stderr
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_user_errors_exit_2_with_one_line(trained: Trained) -> None:
    no_ema = trained.export("hf", "tiny.toml", "--weights", "ema", "--out", "x")
    assert no_ema.returncode == 2
    assert "no EMA weights" in no_ema.stderr
    assert "Traceback" not in no_ema.stderr
    both = trained.export("gguf", str(trained.best), "--checkpoint", "last", "--out", "y.gguf")
    assert both.returncode == 2
    assert "drop --checkpoint" in both.stderr
    other_run = trained.export("gguf", "tiny.toml", "train.run_name=nope", "--out", "z.gguf")
    assert other_run.returncode == 2
    assert "ml-playground train tiny" in other_run.stderr
    assert not (trained.root / "x").exists()
    assert not (trained.root / "z.gguf").exists()
