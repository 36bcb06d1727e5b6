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
    Workdir,
    err,
    load_config,
    user_errors,
)
from ml_playground.errors import CheckpointError, MLPlaygroundError
from ml_playground.train.callbacks import ProgressBar
from ml_playground.train.checkpoint import resolve_checkpoint
from ml_playground.train.loop import run_dir_for


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
    resume: Annotated[
        bool,
        typer.Option("--resume/--no-resume", help="Continue from checkpoints/last if present."),
    ] = True,
    debug: Debug = False,
) -> None:
    """Fine-tune hf.model with LoRA: prepare the corpus with its tokenizer, then train."""
    with user_errors(debug):
        cfg = load_config(experiment, overrides, config)
        _require_hf_extra()
        from ml_playground.finetune.run import finetune

        err.print(f"fine-tuning {cfg.hf.model} with LoRA (r={cfg.lora.r}) on {cfg.data.corpus}")
        result = finetune(cfg, workdir, resume=resume, callbacks=[ProgressBar(err)])
        info, summary = result.dataset.info, result.train.summary
        best = summary["best_val_loss"]
        err.print(
            f"dataset: {info['train_tokens']:,} train / {info['val_tokens']:,} val tokens "
            f"({result.dataset.directory})"
        )
        err.print(
            f"done: {summary['iters']} iters, best val loss "
            f"{'n/a' if best is None else f'{best:.4f}'} at iter {summary['best_iter']}, "
            f"{summary['wall_s']:.1f} s, {summary['tokens_per_s']:,.0f} tok/s → "
            f"{result.train.run_dir}"
        )
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
        path = resolve_checkpoint(run_dir, checkpoint)
        if checkpoint == "best" and not path.exists():
            fallback = resolve_checkpoint(run_dir, "last")
            if fallback.exists():
                err.print("notice: no `best` checkpoint yet; merging `last`")
                path = fallback
        if not path.exists():
            raise CheckpointError(
                f"no checkpoint at {path}; run `ml-playground finetune {cfg.name}` first (with "
                f"the same --workdir and train.run_name)"
            )
        target = merge(path, out if out is not None else run_dir / "merged", cfg.train.device)
        err.print(
            f"merged {path} → {target} (Hugging Face layout; also a checkpoint: "
            f"`ml-playground sample {experiment} --checkpoint {target}`)"
        )
