"""Loss curves as PNG files: valid images, from run directories or rows, with clear errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ml_playground.analysis.plots import plot_runs, read_metrics
from ml_playground.errors import MLPlaygroundError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def rows(scale: float, count: int = 5) -> list[dict[str, float]]:
    return [
        {
            "iter": 10 * i,
            "train_loss": scale * (4 - 0.5 * i),
            "val_loss": scale * (4.1 - 0.4 * i),
            "lr": 1e-3 * (i + 1) / count,
            "tokens_per_s": 1000.0,
        }
        for i in range(count)
    ]


def write_run(directory: Path, metrics: list[dict[str, float]]) -> Path:
    directory.mkdir(parents=True)
    lines = "".join(json.dumps(row) + "\n" for row in metrics)
    (directory / "metrics.jsonl").write_text(lines, "utf-8")
    return directory


def test_one_run_from_its_directory_is_a_png(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "x" / "main", rows(1.0))
    out = plot_runs({"main": run}, tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    width, height = png_size(out)
    assert width >= 600
    assert height >= 400
    assert out.stat().st_size > 10_000  # curves drawn, not an empty canvas


def test_many_runs_and_rows_given_directly(tmp_path: Path) -> None:
    runs: dict[str, Path | list[dict[str, float]]] = {
        f"lr={i}": rows(1.0 + i / 10) for i in range(12)
    }
    runs["from-file"] = write_run(tmp_path / "run", rows(0.8)) / "metrics.jsonl"
    out = plot_runs(runs, tmp_path / "sweep.png", metrics=("val_loss",), title="sweep")
    png_size(out)


def test_a_val_only_plot_is_smaller_than_one_with_the_lr_panel(tmp_path: Path) -> None:
    data = {"main": rows(1.0)}
    _, full = png_size(plot_runs(data, tmp_path / "full.png"))
    _, val_only = png_size(plot_runs(data, tmp_path / "val.png", metrics=("val_loss",)))
    assert val_only < full


def test_missing_metrics_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(MLPlaygroundError, match=r"no metrics\.jsonl"):
        plot_runs({"main": tmp_path / "nowhere"}, tmp_path / "x.png")
    with pytest.raises(MLPlaygroundError, match="none of the runs has val_loss"):
        plot_runs({"main": [{"iter": 0, "lr": 1.0}]}, tmp_path / "x.png", metrics=("val_loss",))
    with pytest.raises(MLPlaygroundError, match="no runs"):
        plot_runs({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_read_metrics_names_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 0}\n\nnot json\n', "utf-8")
    with pytest.raises(MLPlaygroundError, match=r"metrics.jsonl:3"):
        read_metrics(path)
