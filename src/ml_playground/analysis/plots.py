"""Loss and learning-rate curves as a PNG, from runs' `metrics.jsonl` (headless, no display).

One function for one run, a few runs, or a whole sweep:

    plot_runs({"main": Path("runs/shakespeare_char/main")}, Path("loss.png"))
    plot_runs({name: run_dir for name, run_dir in sweep.items()}, Path("sweep.png"),
              metrics=("val_loss",))

Metrics named `*_loss` share one panel (train dashed, val solid, one colour per run); every other
metric (`lr`, `tokens_per_s`) gets its own panel below. The figure is drawn on matplotlib's Agg
canvas directly, never through pyplot, so it needs no display and no global backend switch and
is safe to call from any thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_playground.errors import MLPlaygroundError

METRICS_FILE = "metrics.jsonl"
DEFAULT_METRICS = ("train_loss", "val_loss", "lr")
_LINESTYLES = {"train_loss": "--", "val_loss": "-"}
_LABELS = {
    "train_loss": "train loss",
    "val_loss": "val loss",
    "lr": "learning rate",
    "tokens_per_s": "tokens/s",
}

RunSource = Path | Sequence[Mapping[str, Any]]


def read_metrics(source: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` (a run directory or the file itself), in file order."""
    path = source / METRICS_FILE if source.is_dir() else source
    if not path.is_file():
        raise MLPlaygroundError(f"no {METRICS_FILE} at {path}; train the run first")
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise MLPlaygroundError(f"{path}:{number} is not a JSON object") from None
    return rows


def _panels(metrics: Sequence[str]) -> list[list[str]]:
    """Loss metrics together in the first panel, each other metric in its own."""
    losses = [m for m in metrics if m.endswith("_loss")]
    others = [[m] for m in metrics if not m.endswith("_loss")]
    return ([losses] if losses else []) + others


def plot_runs(
    runs: Mapping[str, RunSource],
    out: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    title: str | None = None,
) -> Path:
    """Draw `metrics` against `iter` for every run into the PNG `out`; returns `out`.

    `runs` maps a legend name to a run directory, a `metrics.jsonl` path, or rows already read.
    Rows without a metric are skipped for that metric, so runs that log different things mix.
    """
    if not runs:
        raise MLPlaygroundError("nothing to plot: no runs given")
    if not metrics:
        raise MLPlaygroundError("nothing to plot: no metrics given")
    data = {
        name: read_metrics(src) if isinstance(src, Path) else list(src)
        for name, src in runs.items()
    }
    if not any(any(m in row for m in metrics) for rows in data.values() for row in rows):
        raise MLPlaygroundError(
            f"none of the runs has {', '.join(metrics)} logged yet; train until the first eval"
        )
    try:  # imported here: the rest of the package works without matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MLPlaygroundError(
            "plots need matplotlib, which is not installed: pip install matplotlib"
        ) from None
    panels = _panels(metrics)
    heights = [3.0] + [1.6] * (len(panels) - 1)
    figure = Figure(figsize=(8.0, sum(heights) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0]
    palette = [f"C{i % 10}" for i in range(len(data))]
    for ax, panel in zip(axes, panels, strict=True):
        for colour, (name, rows) in zip(palette, data.items(), strict=True):
            for metric in panel:
                points = [(row["iter"], row[metric]) for row in rows if row.get(metric) is not None]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                label = name if len(panel) == 1 else f"{name} · {_LABELS.get(metric, metric)}"
                ax.plot(
                    xs,
                    ys,
                    _LINESTYLES.get(metric, "-"),
                    color=colour,
                    label=label,
                    marker="." if len(xs) < 30 else None,
                )
        ax.set_ylabel(
            "loss (nats/token)" if panel[0].endswith("_loss") else _LABELS.get(panel[0], panel[0])
        )
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0] and (len(data) > 1 or len(panel) > 1):
            ax.legend(fontsize="small", ncols=1 if len(data) < 8 else 2)
        if panel[0] == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1].set_xlabel("iteration")
    if title:
        figure.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=120)
    return out
