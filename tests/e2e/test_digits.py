"""Images as tokens from the command line: prepare digits, train briefly, sample a PNG grid."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cli_runner import cli, ok
from ml_playground.generate.images import grid_shape

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.dropout=0.0",
    "train.batch_size=16",
    "train.max_iters=60",
    "train.warmup_iters=5",
    "train.learning_rate=3e-3",
    "train.eval_interval=30",
    "train.eval_iters=5",
    "train.checkpoint_interval=30",
    "tracking.tensorboard=false",
]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.slow
def test_digits_train_lowers_loss_and_sample_writes_a_grid(tmp_path: Path) -> None:
    workdir = ["--workdir", str(tmp_path / "work")]
    ok(cli("prepare", "digits_pixels", *workdir, cwd=tmp_path))
    ok(cli("train", "digits_pixels", *TINY, *workdir, cwd=tmp_path))
    run_dir = tmp_path / "work" / "runs" / "digits_pixels" / "main"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 60
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5  # from ~ln(28) towards the pixels

    out = tmp_path / "sevens.png"
    sampled = ok(
        cli(
            "sample",
            "digits_pixels",
            *TINY,
            "--prompt",
            "7",
            "--num-samples",
            "12",
            "--out",
            str(out),
            "--json",
            *workdir,
            cwd=tmp_path,
        )
    )
    texts = json.loads(sampled.stdout)["samples"]
    assert len(texts) == 12
    assert all(text.startswith("\n<7>") for text in texts)
    height, width = grid_shape(12, 8, 8)
    assert png_size(out) == (width, height)

    report = ok(cli("evaluate", "digits_pixels", *TINY, *workdir, cwd=tmp_path))
    assert "loss per pixel" in report.stdout
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["pixels"] == 180 * 64
    assert evaluation["nats_per_pixel"] > 0
