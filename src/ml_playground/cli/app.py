"""The `ml-playground` command line: parse → call one function → render.

Every command takes EXPERIMENT (a preset name or a TOML path), then KEY=VALUE overrides, and
`--workdir`. User errors (`MLPlaygroundError`) print one line on stderr and exit 2; `--debug`
shows the traceback instead. Ctrl-C during training saves `last` and exits 130.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

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
    out,
    user_errors,
)
from ml_playground.config.loading import config_to_toml, list_presets
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.prepare import PrepareResult, prepare_dataset
from ml_playground.errors import CheckpointError, ConfigError, MLPlaygroundError
from ml_playground.generate.images import sample_image_grid
from ml_playground.generate.service import encode_prompt, load_for_inference, sample_texts
from ml_playground.train.callbacks import ProgressBar
from ml_playground.train.loop import TrainResult, run_dir_for, train
from ml_playground.train.run_checkpoint import find_run_checkpoint

app = typer.Typer(
    name="ml-playground",
    help="Prepare text, train a GPT, sample from it — one typed config per experiment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
experiments_app = typer.Typer(help="Presets shipped with the package.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect resolved configs.", no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")
app.add_typer(config_app, name="config")


# --- commands ------------------------------------------------------------------------------------
@experiments_app.command("list")
def experiments_list() -> None:
    """List the presets that ship with the package."""
    table = Table("experiment", "description")
    for name, description in list_presets().items():
        table.add_row(name, description)
    out.print(table)


@config_app.command("show")
def config_show(
    experiment: Experiment,
    overrides: Overrides = None,
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Print the fully resolved config as TOML."""
    with user_errors(debug):
        sys.stdout.write(config_to_toml(load_config(experiment, overrides, config)))


def _run_prepare(cfg: ExperimentConfig, workdir: Path, force: bool) -> PrepareResult:
    bar = Progress(
        TextColumn("[bold]prepare {task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done)

    started = time.perf_counter()
    with bar:
        result = prepare_dataset(cfg.data, workdir, cfg.name, force=force, progress=progress)
    seconds = time.perf_counter() - started
    info = result.info
    verb = "up to date (use --force to redo)" if result.skipped else "prepared"
    err.print(
        f"dataset {verb}: {result.directory} — {info['train_tokens']:,} train / "
        f"{info['val_tokens']:,} val tokens, vocab {info['vocab_size']}, {info['dtype']}, "
        f"{info['documents']:,} documents"
        + (
            f" (loss on {info['train_response_tokens']:,} train response tokens)"
            if "loss_mask" in info
            else ""
        )
        + ("" if result.skipped else f", {info['source_bytes'] / 1e6 / seconds:.1f} MB/s")
    )
    return result


@app.command()
def prepare(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo even if the source is unchanged.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Turn the corpus into a tokenizer and train/val token files under datasets/EXPERIMENT/."""
    with user_errors(debug):
        _run_prepare(load_config(experiment, overrides, config), workdir, force)


def _run_train(cfg: ExperimentConfig, workdir: Path, resume: bool) -> TrainResult:
    result = train(cfg, workdir, resume=resume, callbacks=[ProgressBar(err)])
    summary = result.summary
    if os.environ.get("RANK", "0") != "0":
        return result  # under torchrun only rank 0 reports
    err.print(done_line(summary, result.run_dir))
    return result


@app.command("train")
def train_command(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    resume: Resume = True,
    debug: Debug = False,
) -> None:
    """Train the GPT; re-running the same command resumes from checkpoints/last."""
    with user_errors(debug):
        _run_train(load_config(experiment, overrides, config), workdir, resume)


def _sample_flags(**options: Any) -> dict[str, Any]:
    """CLI sampling flags as a `[sample]` layer, so flags and KEY=VALUE share one validator."""
    return {"sample": {key: value for key, value in options.items() if value is not None}}


def _run_sample(
    cfg: ExperimentConfig, workdir: Path, as_json: bool, out: Path | None = None
) -> list[str]:
    path = find_run_checkpoint(
        run_dir_for(workdir, cfg),
        cfg.sample.checkpoint,
        verb="sampling from",
        creator=f"ml-playground train {cfg.name}",
        say=err.print,
    )
    loaded = load_for_inference(path, cfg.train.device, cfg.sample.weights)
    if isinstance(loaded.tokenizer, PixelTokenizer):  # an image model: a PNG grid of samples
        texts = sample_image_grid(loaded, cfg.sample, run_dir_for(workdir, cfg), out, err.print)
        if as_json:
            sys.stdout.write(json.dumps({"samples": texts}) + "\n")
        return texts
    encode_prompt(loaded, cfg.sample.prompt, cfg.sample.chat)  # fail before anything is printed

    def stream(index: int, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    if not as_json:
        err.print(f"sampling from {path}")
    texts = []
    for index in range(cfg.sample.num_samples):
        single = cfg.sample.model_copy(update={"num_samples": 1, "seed": cfg.sample.seed + index})
        if not as_json:
            sys.stdout.write(cfg.sample.prompt)
        texts += sample_texts(loaded, single, None if as_json else stream)
        if not as_json:
            sys.stdout.write("\n" + ("-" * 40 + "\n" if index + 1 < cfg.sample.num_samples else ""))
    if as_json:
        sys.stdout.write(json.dumps({"samples": [cfg.sample.prompt + t for t in texts]}) + "\n")
    return texts


@app.command()
def sample(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    prompt: Annotated[str | None, typer.Option(help="Text to continue.")] = None,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from a file.", exists=True, dir_okay=False)
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per sample.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample from the k most likely tokens (0 = off).")
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="How many samples.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="best, last, or a checkpoint path.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="model, or ema (the weights' moving average).")
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="CTRL repetition penalty (1 = off).")
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop at this string (repeatable).")
    ] = None,
    min_new_tokens: Annotated[
        int | None, typer.Option(help="No end-of-text before this many tokens.")
    ] = None,
    chat: Annotated[
        bool | None,
        typer.Option("--chat/--no-chat", help="Prompt as a user turn of the chat template."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"samples": [...]}.')] = False,
    out: Annotated[
        Path | None, typer.Option(help="Image presets: write the PNG grid here.", dir_okay=False)
    ] = None,
    debug: Debug = False,
) -> None:
    """Generate text from a trained checkpoint, streaming it to stdout (images: a PNG grid)."""
    with user_errors(debug):
        if prompt_file is not None:
            prompt = prompt_file.read_text("utf-8")
        flags = _sample_flags(
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_samples=num_samples,
            seed=seed,
            checkpoint=checkpoint,
            weights=weights,
            repetition_penalty=repetition_penalty,
            stop=stop or None,
            min_new_tokens=min_new_tokens,
            chat=chat,
        )
        _run_sample(load_config(experiment, overrides, config, flags), workdir, as_json, out)


@app.command()
def loop(
    experiment: Experiment,
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """prepare → train → sample, in one command."""
    with user_errors(debug):
        cfg = load_config(experiment, overrides, config)
        _run_prepare(cfg, workdir, force=False)
        _run_train(cfg, workdir, resume=True)
        _run_sample(cfg, workdir, as_json=False)


def _run_serve(
    experiment: str,
    overrides: list[str] | None,
    config_file: Path | None,
    workdir: Path,
    flags: dict[str, Any],
    variants: list[str] | None = None,
    strategy: str = "round-robin",
) -> None:
    """Resolve the checkpoint (an experiment's best/last, or a checkpoint dir) and serve it.

    With `variants` (checkpoint dirs, optionally NAME=DIR), those answer as A/B variants
    (round-robin) or the first answers while the others shadow it.
    """
    target = Path(experiment)
    is_checkpoint = target.is_dir() and (target / "config.toml").is_file()
    if is_checkpoint and "checkpoint" in flags["serve"]:
        raise ConfigError(f"{target} is a checkpoint already; drop --checkpoint")
    # A checkpoint directory brings its own config, which overrides and flags layer over.
    source = str(target / "config.toml") if is_checkpoint else experiment
    cfg = load_config(source, overrides, config_file, flags)
    if is_checkpoint or variants:  # variants name their own checkpoints
        path = target
    else:
        path = find_run_checkpoint(
            run_dir_for(workdir, cfg),
            cfg.serve.checkpoint,
            verb="serving",
            creator=f"ml-playground train {cfg.name}",
            say=err.print,
            directory_ok=True,
        )
    try:
        import uvicorn

        from ml_playground.serve.app import create_app
    except ImportError as exc:
        raise MLPlaygroundError(
            f"serving needs the `serve` extra ({exc.name} is missing): "
            f"pip install 'ml_playground[serve]'"
        ) from None
    router = None
    if variants:
        from ml_playground.serve.variants import VariantRouter

        named = _variant_paths(variants)
        router = VariantRouter(
            {
                name: load_for_inference(where, cfg.train.device, cfg.serve.weights)
                for name, where in named.items()
            },
            strategy,
            max_concurrency=cfg.serve.max_concurrency,
            shadow_log=workdir / "runs" / cfg.name / "shadow.jsonl",
        )
        loaded = router.variants[router.primary]
        path = loaded.checkpoint.path
        err.print(
            f"variants ({strategy}): "
            + ", ".join(f"{name}={where}" for name, where in named.items())
            + (f"; shadow outputs → {router.shadow_log}" if strategy == "shadow" else "")
        )
    else:
        loaded = load_for_inference(path, cfg.train.device, cfg.serve.weights)
    app = create_app(loaded, cfg.serve, model_id=cfg.name, router=router)
    host, port = cfg.serve.host, cfg.serve.port
    try:  # bind here, so a taken port is a one-line user error and port 0 can be reported
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MLPlaygroundError(f"cannot listen on {host}:{port}: {reason}") from None
    url = f"http://{host if family == socket.AF_INET else f'[{host}]'}:{sock.getsockname()[1]}"
    err.print(
        f"serving {path} as '{cfg.name}' on {url}/ (playground), {url}/v1 (OpenAI-style API)"
        + (", API key required" if cfg.serve.api_key else "")
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    with sock:
        server.run(sockets=[sock])


def _variant_paths(items: list[str]) -> dict[str, Path]:
    """`--variant DIR` or `--variant NAME=DIR` → name → checkpoint dir (default names A, B, …)."""
    named: dict[str, Path] = {}
    for index, item in enumerate(items):
        name, sep, where = item.partition("=")
        if not sep:
            name, where = chr(ord("A") + index) if index < 26 else f"v{index}", item
        path = Path(where)
        if not (path / "config.toml").is_file():
            raise CheckpointError(f"--variant {item}: {path} is not a checkpoint directory")
        if name in named:
            raise ConfigError(f"--variant name '{name}' is used twice")
        named[name] = path
    if len(named) < 2:
        raise ConfigError("give at least two --variant checkpoints (or none)")
    return named


@app.command()
def serve(
    experiment: Annotated[
        str, typer.Argument(help="Preset name, .toml path, or a checkpoint directory.")
    ],
    overrides: Overrides = None,
    workdir: Workdir = Path("."),
    config: ConfigFile = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default 127.0.0.1: this machine only).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000; 0 = any free).")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ML_PLAYGROUND_API_KEY", help="Require `Authorization: Bearer KEY` on /v1/*."
        ),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="best, last, or a checkpoint path.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="model, or ema (the weights' moving average).")
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="A checkpoint dir (or NAME=DIR) answering as a variant; repeat."),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            help="With --variant: round-robin (A/B) or shadow (first answers, others logged)."
        ),
    ] = "round-robin",
    debug: Debug = False,
) -> None:
    """Serve a checkpoint: OpenAI-style /v1/completions (with streaming) and a web playground."""
    with user_errors(debug):
        options = {"host": host, "port": port, "api_key": api_key}
        options |= {"checkpoint": checkpoint, "weights": weights}
        flags = {"serve": {key: value for key, value in options.items() if value is not None}}
        _run_serve(experiment, overrides, config, workdir, flags, variant, strategy)


# --- sub-command modules: each registers its commands here (one line per module) -------------
from ml_playground.cli.export_cmd import export_app  # noqa: E402

app.add_typer(export_app, name="export")
from ml_playground.cli.finetune_cmd import finetune_command, merge_command  # noqa: E402

app.command("finetune")(finetune_command)
app.command("merge")(merge_command)
from ml_playground.cli.analysis_cmd import analyze, evaluate  # noqa: E402

app.command("evaluate")(evaluate)
app.command("analyze")(analyze)
from ml_playground.cli.runs_cmd import runs_app  # noqa: E402

app.add_typer(runs_app, name="runs")
from ml_playground.cli.variants_cmd import runs_compare, sweep  # noqa: E402

app.command("sweep")(sweep)
runs_app.command("compare")(runs_compare)


def main() -> None:
    """Console-script entry point."""
    app()
