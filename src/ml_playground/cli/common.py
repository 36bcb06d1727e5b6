"""What every command shares: consoles, argument types, config resolution, error → exit code.

Sub-command modules (`export_cmd`, `finetune_cmd`, …) import from here, and `app.py` registers
them, so no command module imports another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig
from ml_playground.errors import MLPlaygroundError
from ml_playground.train.loop import TrainingInterrupted

err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
out = Console(highlight=False, markup=False)

# --- shared arguments ----------------------------------------------------------------------------
Experiment = Annotated[
    str, typer.Argument(help="Preset name (see `experiments list`) or a .toml path.")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. train.max_iters=100.")
]
Workdir = Annotated[
    Path,
    typer.Option(
        envvar="ML_PLAYGROUND_WORKDIR", help="Where datasets/ and runs/ live.", file_okay=False
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="A TOML file layered over the preset.", dir_okay=False),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for user errors.")]
Resume = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Continue from checkpoints/last if present.")
]


def done_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The one line a finished training run (train, finetune) ends with."""
    best, mfu = summary["best_val_loss"], summary.get("mfu")
    return (
        f"done: {summary['iters']} iters, best val loss "
        f"{'n/a' if best is None else f'{best:.4f}'} at iter {summary['best_iter']}, "
        f"{summary['wall_s']:.1f} s, {summary['tokens_per_s']:,.0f} tok/s"
        f"{'' if mfu is None else f', MFU {mfu:.1%}'} → {run_dir}"
    )


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Map the error family to exit codes: user error 2, interrupted 130, bug 1 (traceback)."""
    try:
        yield
    except TrainingInterrupted as exc:
        err.print(f"interrupted: {exc}")
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except MLPlaygroundError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def load_config(
    experiment: str,
    overrides: list[str] | None,
    config_file: Path | None,
    flags: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Resolve the config; `flags` (from dedicated CLI options) win over KEY=VALUE overrides."""
    return resolve_config(experiment, overrides, config_file, flags)
