"""`sweep` (train many variants, rank them) and `runs compare` (rank runs that exist)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ml_playground.cli.common import (
    ConfigFile,
    Debug,
    Experiment,
    Overrides,
    Workdir,
    err,
    load_config,
    out,
    user_errors,
)
from ml_playground.errors import MLPlaygroundError
from ml_playground.variants.compare import Comparison, compare, find_runs, read_run
from ml_playground.variants.executors import make_executor
from ml_playground.variants.sweep import plan_sweep, run_sweep


def render(comparison: Comparison, title: str) -> None:
    table = Table(title=title)
    for column in Comparison.HEADER:  # the config label is the point: never cut it short
        table.add_column(column, overflow="fold", min_width=24 if column == "config" else None)
    for row in comparison.rows():
        table.add_row(*row)
    out.print(table)
    if comparison.test is not None:
        out.print(comparison.test.verdict())


def sweep(
    experiment: Experiment,
    overrides: Overrides = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V1,V2,… : every value (repeat for a Cartesian product)."),
    ] = None,
    random_spec: Annotated[
        list[str] | None,
        typer.Option(
            "--random",
            help="KEY=DIST: uniform(a,b), loguniform(a,b), int(a,b) or choice(v1,v2,…).",
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Draws from the --random distributions.")] = 0,
    seeds: Annotated[
        int, typer.Option(help="Repeat each config with this many seeds (mean ± std, t-test).")
    ] = 1,
    parallel: Annotated[int, typer.Option(help="Branches running at once.")] = 1,
    name: Annotated[
        str, typer.Option(help="Sweep name: runs are <name>-<config id>; re-run to resume.")
    ] = "sweep",
    executor: Annotated[str, typer.Option(help="local (processes here) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (auto, HOST:PORT); default: local.")
    ] = None,
    random_seed: Annotated[int, typer.Option(help="Seed of the --random draws.")] = 0,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            "--mlflow/--no-mlflow", help="Parent + child MLflow runs (default: if installed)."
        ),
    ] = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Train every variant of EXPERIMENT (grid / random / seeds) and rank them by val loss."""
    with user_errors(debug):
        plan = plan_sweep(
            experiment,
            overrides or [],
            config,
            grid=grid or [],
            random_specs=random_spec or [],
            trials=trials,
            seeds=seeds,
            name=name,
            random_seed=random_seed,
        )
        err.print(
            f"sweep '{plan.name}': {len(plan.runs)} runs of {plan.experiment_name} "
            f"({parallel} at a time, executor {executor})"
        )
        runner = make_executor(executor, address)
        try:
            result = run_sweep(
                plan, workdir, runner, parallel=parallel, mlflow=mlflow, say=err.print
            )
        finally:
            runner.close()
        render(result.comparison, f"sweep {plan.name}: {plan.experiment_name}")
        err.print(
            f"report: {result.directory / 'results.md'}, {result.directory / 'sweep.json'}"
            + (f", plot {result.plot}" if result.plot else "")
            + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else "")
        )
        failed = result.branches.failed()
        if failed and failed[0].exception is not None:
            err.print(f"first failure ({failed[0].config_id}): {failed[0].exception}")
        if failed:
            raise MLPlaygroundError(
                f"{len(failed)} of {len(result.branches)} runs failed; see the logs in "
                f"{result.directory / 'logs'}"
            )


def runs_compare(
    experiment: Experiment,
    runs: Annotated[
        list[str] | None, typer.Argument(help="Run names to compare (default: all runs).")
    ] = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Rank an experiment's runs by best val loss; seeds of one config are grouped (mean ± std)."""
    with user_errors(debug):
        name = load_config(experiment, None, config).name
        runs_dir = workdir / "runs" / name
        found = find_runs(runs_dir)
        if runs:
            missing = sorted(set(runs) - {p.name for p in found})
            if missing:
                raise MLPlaygroundError(
                    f"no run {', '.join(missing)} in {runs_dir}; runs there: "
                    f"{', '.join(p.name for p in found) or 'none'}"
                )
            found = [p for p in found if p.name in runs]
        if not found:
            raise MLPlaygroundError(f"no runs in {runs_dir}; train or sweep first")
        render(compare([read_run(p) for p in found]), f"runs of {name}")
