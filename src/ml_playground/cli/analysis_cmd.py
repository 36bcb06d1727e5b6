"""`evaluate` (loss, perplexity, bits per byte, sample quality) and `analyze` (LIT)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ml_playground.analysis.evaluate import evaluate_run
from ml_playground.analysis.lit import lit_app_for_run, serve_lit
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
from ml_playground.errors import ConfigError

Checkpoint = Annotated[
    str | None, typer.Option(help="best (default; falls back to last), last, or a checkpoint path.")
]
_SAMPLE_ROWS = (
    ("distinct_1", "distinct-1", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("distinct_3", "distinct-3", "{:.3f}"),
    ("repetition_rate", "repetition rate (rep-4)", "{:.3f}"),
    ("longest_repeated_line_run", "longest repeated-line run", "{:.2f}"),
    ("mean_line_length", "mean line length (chars)", "{:.1f}"),
    ("copied_ngram_fraction", "copied n-grams", "{:.3f}"),
)


def _checkpoint_flags(checkpoint: str | None) -> dict[str, Any]:
    """--checkpoint as a [sample] layer, so it validates like `sample.checkpoint=...`."""
    return {"sample": {"checkpoint": checkpoint}} if checkpoint is not None else {}


def _render(report: dict[str, Any]) -> None:
    title = (
        f"{report['experiment']}/{report['run']} · iter {report['iter']} · {report['evaluated']}"
    )
    table = Table("metric", "value", title=title)
    table.add_row("tokens / bytes", f"{report['tokens']:,} / {report['bytes']:,}")
    table.add_row("loss (nats/token)", f"{report['loss']:.4f}")
    table.add_row("perplexity", f"{report['perplexity']:.3f}")
    table.add_row("bits per token", f"{report['bits_per_token']:.4f}")
    table.add_row("bits per byte", f"{report['bits_per_byte']:.4f}")
    if "nats_per_pixel" in report:  # image presets
        per_pixel = f"{report['nats_per_pixel']:.4f} ({report['bits_per_pixel']:.4f} bits)"
        table.add_row("loss per pixel (nats)", per_pixel)
    speed = report["tokens_per_s"]
    table.add_row(
        "windows", f"block {report['block_size']}, stride {report['stride']} on {report['device']}"
    )
    table.add_row("time", f"{report['seconds']:.1f} s" + (f", {speed:,.0f} tok/s" if speed else ""))
    samples = report.get("samples")
    if samples:
        mean = samples["mean"]
        table.add_section()
        table.add_row(
            f"samples (mean of {samples['count']})", f"{mean.get('tokens', 0):.0f} tokens each"
        )
        for key, label, fmt in _SAMPLE_ROWS:
            if key in mean:
                if key == "copied_ngram_fraction":
                    label = f"copied {mean['copied_ngram_tokens']:.0f}-grams (memorization)"
                table.add_row(label, fmt.format(mean[key]))
    out.print(table)


def evaluate(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    checkpoint: Checkpoint = None,
    split: Annotated[str, typer.Option(help="Prepared split to score: val or train.")] = "val",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Score this UTF-8 text file instead of a split.", exists=True, dir_okay=False
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=0, help="Also draw N samples ([sample] settings) and score them.")
    ] = 0,
    stride: Annotated[
        int | None,
        typer.Option(
            min=1, help="Slide windows by this many tokens (default: block_size, no overlap)."
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Score only the split's first N tokens.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Loss, perplexity and bits per byte of a checkpoint on every token; saves eval.json."""
    with user_errors(debug):
        if split not in ("val", "train"):
            raise ConfigError(f"--split must be val or train, not {split!r}")
        cfg = load_config(experiment, overrides, config, _checkpoint_flags(checkpoint))
        bar = Progress(
            TextColumn("[bold]evaluate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        task = bar.add_task("evaluate", total=None)
        with bar:
            report = evaluate_run(
                cfg,
                workdir,
                checkpoint=cfg.sample.checkpoint,
                split=split,
                data_file=data,
                stride=stride,
                max_tokens=max_tokens,
                samples=samples,
                say=err.print,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
            return
        _render(report)
        err.print(f"saved {report['path']}")


def analyze(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    checkpoint: Checkpoint = None,
    host: Annotated[str, typer.Option(help="Interface to bind (this machine only by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 = any free).")] = 5432,
    examples: Annotated[int, typer.Option(min=1, help="Held-out passages in LIT's dataset.")] = 200,
    debug: Debug = False,
) -> None:
    """Open a trained checkpoint in LIT: held-out lines, generation, token salience, loss."""
    with user_errors(debug):
        cfg = load_config(experiment, overrides, config, _checkpoint_flags(checkpoint))
        serve_lit(lit_app_for_run(cfg, workdir, examples, err.print), host, port, err.print)
