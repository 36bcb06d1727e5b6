"""`finetune` and `merge`: LoRA fine-tuning of a Hugging Face model (extra `hf`).

transformers and peft are imported when a command runs, so `ml-playground --help` and the other
commands stay fast and work without the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ml_playground.cli.common import (
    ConfigFile,
    Debug,
    Experiment,
    Overrides,
    Resume,
    Workdir,
    done_line,
    err,
    load_config,
    user_errors,
)
from ml_playground.errors import MLPlaygroundError
from ml_playground.train.callbacks import ProgressBar
from ml_playground.train.loop import run_dir_for
from ml_playground.train.run_checkpoint import find_run_checkpoint


def _require_hf_extra() -> None:
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MLPlaygroundError(
            f"fine-tuning needs the `hf` extra ({exc.name} is missing): "
            f"pip install 'ml_playground[hf]'"
        ) from None


def finetune_command(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    resume: Resume = True,
    debug: Debug = False,
) -> None:
    """Fine-tune hf.model with LoRA: prepare the corpus with its tokenizer, then train."""
    with user_errors(debug):
        cfg = load_config(experiment, overrides, config)
        _require_hf_extra()
        from ml_playground.finetune.run import finetune

        err.print(f"fine-tuning {cfg.hf.model} with LoRA (r={cfg.lora.r}) on {cfg.data.corpus}")
        result = finetune(cfg, workdir, resume=resume, callbacks=[ProgressBar(err)])
        info = result.dataset.info
        err.print(
            f"dataset: {info['train_tokens']:,} train / {info['val_tokens']:,} val tokens "
            f"({result.dataset.directory})"
        )
        err.print(done_line(result.train.summary, result.train.run_dir))
        err.print(
            f"next: ml-playground sample {experiment} --prompt '...'  |  "
            f"ml-playground merge {experiment}"
        )


def merge_command(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    checkpoint: Annotated[
        str, typer.Option(help="best, last, or a checkpoint path (a LoRA fine-tune's).")
    ] = "best",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the merged model (default: runs/<exp>/<run>/merged).",
            file_okay=False,
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Fold a fine-tune's LoRA adapter into the base model; write it with save_pretrained."""
    with user_errors(debug):
        cfg = load_config(experiment, overrides, config)
        _require_hf_extra()
        from ml_playground.finetune.run import merge

        run_dir = run_dir_for(workdir, cfg)
        path = find_run_checkpoint(
            run_dir,
            checkpoint,
            verb="merging",
            creator=f"ml-playground finetune {cfg.name}",
            say=err.print,
        )
        target = merge(path, out if out is not None else run_dir / "merged", cfg.train.device)
        err.print(
            f"merged {path} → {target} (Hugging Face layout; also a checkpoint: "
            f"`ml-playground sample {experiment} --checkpoint {target}`)"
        )
