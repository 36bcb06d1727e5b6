"""Regression: `sample` with a prompt the tokenizer cannot encode must fail before printing
anything: exit 2, one line on stderr, and an empty stdout (not the prompt echoed and then an
error).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.loop import train


def sample_cli(experiment: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ML_PLAYGROUND")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"})
    return subprocess.run(
        [sys.executable, "-m", "ml_playground", "sample", str(experiment), "--workdir",
         str(workdir), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )  # fmt: skip


def test_bad_prompt_prints_nothing(
    make_config: Callable[..., ExperimentConfig], tiny_experiment: Path, workdir: Path
) -> None:
    config = make_config("train.max_iters=2", "train.eval_interval=2")
    prepare_dataset(config.data, workdir, config.name)
    train(config, workdir)

    # "§" never occurs in the tiny corpus, so the character tokenizer cannot encode it.
    result = sample_cli(tiny_experiment, workdir, "--prompt", "KING. §", "--num-samples", "2")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "'§' is not in this character vocabulary" in errors[0]
