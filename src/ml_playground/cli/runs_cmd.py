"""`runs …`: look at finished or running runs of an experiment (`runs plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ml_playground.analysis.plots import DEFAULT_METRICS, METRICS_FILE, plot_runs
from ml_playground.cli.common import (
    ConfigFile,
    Debug,
    Experiment,
    Workdir,
    err,
    load_config,
    user_errors,
)
from ml_playground.errors import MLPlaygroundError

runs_app = typer.Typer(help="Inspect an experiment's runs.", no_args_is_help=True)


def experiment_runs_dir(
    experiment: str, config_file: Path | None, workdir: Path
) -> tuple[str, Path]:
    """(experiment name, runs/<name>/) for a preset name or a TOML path."""
    name = load_config(experiment, None, config_file).name
    return name, workdir / "runs" / name


def pick_runs(runs_dir: Path, names: list[str] | None) -> dict[str, Path]:
    """The named runs (each must exist), or every run that has logged metrics, sorted."""
    if names:
        missing = [name for name in names if not (runs_dir / name).is_dir()]
        if missing:
            known = (
                sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
                if runs_dir.is_dir()
                else []
            )
            raise MLPlaygroundError(
                f"no run {', '.join(missing)} in {runs_dir}"
                + (f"; runs there: {', '.join(known)}" if known else "; train one first")
            )
        return {name: runs_dir / name for name in names}
    found = (
        sorted(p.parent for p in runs_dir.glob(f"*/{METRICS_FILE}")) if runs_dir.is_dir() else []
    )
    if not found:
        raise MLPlaygroundError(f"no runs with {METRICS_FILE} in {runs_dir}; train one first")
    return {path.name: path for path in found}


@runs_app.command("plot")
def plot(
    experiment: Experiment,
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run names (train.run_name); default: all runs.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="PNG to write (default: runs/EXPERIMENT/loss.png).", dir_okay=False
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", help="A metrics.jsonl field to draw (repeatable; default: losses and lr)."
        ),
    ] = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Draw train/val loss curves and the learning rate of an experiment's runs as a PNG."""
    with user_errors(debug):
        name, runs_dir = experiment_runs_dir(experiment, config, workdir)
        chosen = pick_runs(runs_dir, runs)
        target = out if out is not None else runs_dir / "loss.png"
        plot_runs(chosen, target, metrics=tuple(metric or DEFAULT_METRICS), title=name)
        err.print(f"wrote {target} ({len(chosen)} run{'s' if len(chosen) != 1 else ''})")
