"""`finetune`, `sample` and `merge` as a user runs them, on a tiny local Llama (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_runner import cli, ok

pytest.importorskip("peft", reason="fine-tuning needs the `hf` extra")

# The tiny-model builder lives with the unit tests of the finetune package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "finetune"))
from tiny_hf import sample_text, save_tiny_model

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Tuned:
    root: Path
    args: list[str]  # the experiment, its overrides and --workdir
    finetune: subprocess.CompletedProcess[str]

    @property
    def run_dir(self) -> Path:
        return self.root / "work" / "runs" / "tiny_hf_lora" / "main"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    root = tmp_path_factory.mktemp("finetune")
    model = save_tiny_model(root / "model", "llama")
    (root / "corpus.txt").write_text(sample_text(), "utf-8")
    args = [
        "tiny_hf_lora",
        f"hf.model={model.as_posix()}",
        f"data.path={(root / 'corpus.txt').as_posix()}",
        "train.max_iters=6",
        "train.eval_interval=3",
        "train.checkpoint_interval=3",
        "--workdir",
        str(root / "work"),
    ]
    return Tuned(root, args, ok(cli("finetune", *args, cwd=root)))


def samples(tuned: Tuned, *flags: str) -> list[str]:
    result = ok(
        cli(
            "sample",
            *tuned.args,
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--json",
            *flags,
            cwd=tuned.root,
        )
    )
    texts: list[str] = json.loads(result.stdout)["samples"]
    return texts


def test_finetune_writes_a_run_with_adapter_checkpoints(tuned: Tuned) -> None:
    assert "done: 6 iters" in tuned.finetune.stderr
    assert "LoRA" in tuned.finetune.stderr
    assert len((tuned.run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((tuned.run_dir / "summary.json").read_text())
    assert summary["iters"] == 6
    for kind in ("best", "last"):
        assert (tuned.run_dir / "checkpoints" / kind / "adapter_model.safetensors").is_file()


def test_finetune_again_resumes_and_does_nothing_more(tuned: Tuned) -> None:
    again = ok(cli("finetune", *tuned.args, cwd=tuned.root))
    assert "done: 6 iters" in again.stderr
    assert len((tuned.run_dir / "metrics.jsonl").read_text().splitlines()) == 3


def test_sample_and_merge(tuned: Tuned) -> None:
    first = samples(tuned)
    assert first == samples(tuned)  # greedy is deterministic
    assert first[0].startswith("the king")
    merged = ok(cli("merge", *tuned.args, cwd=tuned.root))
    assert "merged" in merged.stderr
    merged_dir = tuned.run_dir / "merged"
    assert (merged_dir / "config.json").is_file()
    assert (merged_dir / "model.safetensors").is_file()
    assert samples(tuned, "--checkpoint", str(merged_dir)) == first


def test_user_errors_exit_2_with_one_line(tuned: Tuned) -> None:
    no_model = cli("finetune", "tiny_hf_lora", "data.path=x.txt", cwd=tuned.root)
    assert no_model.returncode == 2
    assert "hf.model" in no_model.stderr
    assert "Traceback" not in no_model.stderr
    offline = cli(
        "finetune", "tiny_hf_lora", "hf.model=example-org/not-cached", "data.path=x.txt",
        cwd=tuned.root,
    )  # fmt: skip
    assert offline.returncode == 2
    assert "hf.model=/path/to/model" in offline.stderr
    train = cli("train", *tuned.args, cwd=tuned.root)
    assert train.returncode == 2
    assert "ml-playground finetune tiny_hf_lora" in train.stderr
