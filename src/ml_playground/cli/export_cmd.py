"""`ml-playground export hf|gguf|ollama`: write a checkpoint in a format other tools load.

Each command resolves the checkpoint as `sample` does (or takes a checkpoint directory), calls
one exporter in `ml_playground.export`, and reports what was written and checked: sizes and
checks on stderr, the written path on stdout (so scripts can capture it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_playground.cli.common import ConfigFile, Debug, Overrides, Workdir, err, user_errors
from ml_playground.export.common import ExportError, ExportReport, human_size
from ml_playground.export.source import ExportSource, load_source, resolve_source
from ml_playground.generate.service import LoadedModel

export_app = typer.Typer(
    help="Export a checkpoint: Hugging Face directory, GGUF (llama.cpp), Ollama model.",
    no_args_is_help=True,
)


class Dtype(StrEnum):
    f32 = "f32"
    f16 = "f16"
    q8_0 = "q8_0"


Source = Annotated[str, typer.Argument(help="Preset name, .toml path, or a checkpoint directory.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing export.")]
Checkpoint = Annotated[
    str | None, typer.Option(help="best (default, falls back to last), last, or a path.")
]
Weights = Annotated[str | None, typer.Option(help="model, or ema (the weights' moving average).")]
DtypeOption = Annotated[
    Dtype, typer.Option("--dtype", help="Matrix precision: f32, f16 or q8_0 (8-bit).")
]


def _load(
    experiment: str,
    overrides: list[str] | None,
    config: Path | None,
    workdir: Path,
    checkpoint: str | None,
    weights: str | None,
) -> tuple[ExportSource, LoadedModel]:
    options = {"checkpoint": checkpoint, "weights": weights}
    flags: dict[str, Any] = {"sample": {k: v for k, v in options.items() if v is not None}}
    source = resolve_source(experiment, overrides, config, workdir, flags, err.print)
    err.print(f"exporting {source.checkpoint} ({source.weights} weights)")
    return source, load_source(source)


def _require_gguf() -> None:
    """The `gguf` package is the optional `export` extra; say how to get it."""
    if importlib.util.find_spec("gguf") is None:
        raise ExportError(
            "GGUF export needs the gguf package (the `export` extra): "
            "pip install 'ml_playground[export]'"
        )


def _render(report: ExportReport, what: str) -> None:
    for check in report.checks:
        err.print(f"  ✓ {check}")
    for path, size in report.files:
        err.print(f"  {human_size(size):>10}  {path}")
    for note in report.notes:
        err.print(f"notice: {note}")
    err.print(f"wrote {what}: {report.target} ({human_size(report.total_bytes)})")
    sys.stdout.write(f"{report.target}\n")


@export_app.command("hf")
def hf(
    experiment: Source,
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created).")],
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    force: Force = False,
    debug: Debug = False,
) -> None:
    """A transformers GPT-2 directory: AutoModelForCausalLM / AutoTokenizer load it offline."""
    with user_errors(debug):
        # Exporters import their heavy, optional libraries (transformers, gguf) only when used,
        # so the rest of the CLI starts fast and works without the extras.
        from ml_playground.export.hf import export_hf

        source, loaded = _load(experiment, overrides, config, workdir, checkpoint, weights)
        report = export_hf(loaded, out, source.config.sample, source.config.name, force)
        _render(report, "Hugging Face model")


@export_app.command("gguf")
def gguf(
    experiment: Source,
    out: Annotated[
        str, typer.Option("--out", help="File to write, or a directory (ending in /) for it.")
    ],
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    dtype: DtypeOption = Dtype.f16,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    force: Force = False,
    debug: Debug = False,
) -> None:
    """One GGUF file for llama.cpp (architecture gpt2, tokenizer included)."""
    with user_errors(debug):
        _require_gguf()
        from ml_playground.export.gguf import default_file_name, export_gguf

        source, loaded = _load(experiment, overrides, config, workdir, checkpoint, weights)
        target = Path(out)
        if target.is_dir() or out.endswith(("/", os.sep)):
            target = target / default_file_name(source.config.name, dtype.value)
        report = export_gguf(
            loaded, target, source.config.name, dtype.value, source.config.sample, force
        )
        _render(report, "GGUF")


@export_app.command("ollama")
def ollama(
    experiment: Source,
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created).")],
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    dtype: DtypeOption = Dtype.f16,
    checkpoint: Checkpoint = None,
    weights: Weights = None,
    force: Force = False,
    debug: Debug = False,
) -> None:
    """GGUF + Modelfile (parameters from [sample]) + README + SHA256SUMS for `ollama create`."""
    with user_errors(debug):
        _require_gguf()
        from ml_playground.export.ollama import export_ollama

        source, loaded = _load(experiment, overrides, config, workdir, checkpoint, weights)
        report = export_ollama(
            loaded, out, source.config.name, dtype.value, source.config.sample, force
        )
        _render(report, "Ollama model")
