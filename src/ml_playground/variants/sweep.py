"""`ml-playground sweep`: a MultiBranch over training runs, one process and run dir per branch.

    sweep shakespeare_char --grid train.learning_rate=1e-3,3e-4 --grid model.n_layer=2,4 --seeds 3

1. Plan: the grid's Cartesian product (and/or `--trials` draws from `--random` distributions),
   each repeated with `--seeds` seeds. Every branch's full config is validated before anything
   runs, so a typo costs a second, not a sweep. A branch's run name derives from its config id:
   `<sweep>-<id[:8]>[-s<seed>]`, so re-running a sweep resumes its runs instead of duplicating.
2. Run: `@experiment` with `MultiBranch(max_concurrency=--parallel)`; each branch runs
   `ml-playground train …` through an executor (local process or Ray). Finished runs are skipped.
3. Record: one MLflow parent run for the sweep; each training run logs itself as its child
   (`mlflow.parentRunId`), so `mlflow ui` groups them.
4. Report: a table ranked by best val loss (mean ± std over seeds, Welch's t-test for the winner),
   `sweep.json`, `results.md` and `val_loss.png` under `runs/<experiment>/sweeps/<sweep>/`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ml_playground.config.loading import parse_override, resolve_config
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import ConfigError, MLPlaygroundError
from ml_playground.variants.branch import Branch, BranchContainer
from ml_playground.variants.compare import Comparison, RunRecord, compare
from ml_playground.variants.config import Config, compute_config_id
from ml_playground.variants.executors import Executor, TrainTask
from ml_playground.variants.experiment import experiment
from ml_playground.variants.strategies import MultiBranch

SWEEPS_DIR = "sweeps"
PARENT_ID_FILE = "mlflow_parent_run_id"


# --- parsing `--grid` and `--random` -----------------------------------------------------------
def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets, braces, parentheses and quotes: `[1,2],[3,4]` → 2."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_value(key: str, raw: str) -> Any:
    """A value as a TOML literal (bare words are strings), exactly as KEY=VALUE overrides read."""
    node: Any = parse_override(f"{key}={raw}")
    for part in key.split("."):
        node = node[part]
    return node


def _key_and_rest(item: str, flag: str) -> tuple[str, str]:
    key, sep, rest = item.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise ConfigError(f"{flag} expects KEY=VALUES, e.g. {flag} train.learning_rate=1e-3,3e-4")
    return key, rest.strip()


def parse_grid(item: str) -> tuple[str, list[Any]]:
    """`train.learning_rate=1e-3,3e-4` → ("train.learning_rate", [0.001, 0.0003])."""
    key, rest = _key_and_rest(item, "--grid")
    values = [parse_value(key, raw) for raw in split_top_level(rest)]
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ConfigError(f"--grid {key} lists a value twice")
    return key, values


@dataclass(frozen=True)
class Distribution:
    """A `--random` distribution: uniform(a,b), loguniform(a,b), int(a,b) or choice(v1,v2,…)."""

    kind: str
    args: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(self.args[0], self.args[1])
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1])))
        if self.kind == "int":
            return rng.randint(self.args[0], self.args[1])
        return rng.choice(self.args)


def parse_random(item: str) -> tuple[str, Distribution]:
    key, rest = _key_and_rest(item, "--random")
    name, open_paren, inner = rest.partition("(")
    name = name.strip()
    kinds = ("uniform", "loguniform", "int", "choice")
    if not open_paren or not inner.endswith(")") or name not in kinds:
        raise ConfigError(
            f"--random {key}: '{rest}' is not a distribution; use one of "
            f"uniform(a,b), loguniform(a,b), int(a,b), choice(v1,v2,...)"
        )
    args = tuple(parse_value(key, raw) for raw in split_top_level(inner[:-1]))
    if name == "choice":
        if not args:
            raise ConfigError(f"--random {key}: choice() needs at least one value")
        return key, Distribution(name, args)
    if len(args) != 2 or not all(isinstance(a, int | float) for a in args):
        raise ConfigError(f"--random {key}: {name}(a,b) takes two numbers")
    low, high = args
    if not low < high:
        raise ConfigError(f"--random {key}: {name}({low},{high}) needs a < b")
    if name == "loguniform" and low <= 0:
        raise ConfigError(f"--random {key}: loguniform needs positive bounds")
    if name == "int" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"--random {key}: int(a,b) takes two integers")
    return key, Distribution(name, args)


# --- the plan -------------------------------------------------------------------------------------
def toml_literal(value: Any) -> str:
    """The right-hand side of `KEY=VALUE` that parses back to `value`."""
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


@dataclass(frozen=True)
class PlannedRun:
    group_id: str
    seed: int | None
    config: Config  # the dotted overrides of this branch (seed included when swept)
    run_name: str
    overrides: tuple[str, ...]
    max_iters: int


@dataclass(frozen=True)
class SweepPlan:
    name: str
    experiment: str
    experiment_name: str
    config_file: Path | None
    base_overrides: tuple[str, ...]
    runs: tuple[PlannedRun, ...]
    base: ExperimentConfig


def plan_sweep(
    experiment_ref: str,
    base_overrides: Sequence[str],
    config_file: Path | None,
    *,
    grid: Sequence[str] = (),
    random_specs: Sequence[str] = (),
    trials: int = 0,
    seeds: int = 1,
    name: str = "sweep",
    random_seed: int = 0,
) -> SweepPlan:
    """Expand the search space and validate every branch's config before anything runs."""
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError(f"sweep name '{name}' may use letters, digits, '.', '_' and '-' only")
    axes = [parse_grid(item) for item in grid]
    keys = [key for key, _ in axes]
    distributions = [parse_random(item) for item in random_specs]
    keys += [key for key, _ in distributions]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ConfigError(f"swept more than once: {', '.join(duplicated)}")
    if "train.run_name" in keys:
        raise ConfigError("the sweep names its runs; don't sweep train.run_name")
    if distributions and trials < 1:
        raise ConfigError("--random needs --trials N (how many draws)")
    if trials and not distributions:
        raise ConfigError("--trials needs at least one --random KEY=DISTRIBUTION")
    if not axes and not distributions and seeds == 1:
        raise ConfigError("nothing to sweep: give --grid, --random with --trials, or --seeds")
    data_keys = sorted(k for k in keys if k.startswith("data."))
    if data_keys:
        raise ConfigError(
            f"cannot sweep {', '.join(data_keys)}: an experiment has one prepared dataset; make "
            f"one experiment per data setting (a TOML file each) and compare them"
        )
    if seeds > 1 and "train.seed" in keys:
        raise ConfigError("--seeds repeats each config with new train.seed values; don't sweep it")

    base = resolve_config(experiment_ref, list(base_overrides), config_file)
    points: list[dict[str, Any]] = [
        dict(zip([k for k, _ in axes], combo, strict=True))
        for combo in itertools.product(*(values for _, values in axes))
    ]
    if distributions:
        rng = random.Random(random_seed)
        points = [
            point | {key: dist.sample(rng) for key, dist in distributions}
            for point in points
            for _ in range(trials)
        ]
    runs = []
    for point in points:
        group_id = compute_config_id(point)
        for index in range(seeds):
            seed = base.train.seed + index if seeds > 1 else None
            settings = point | ({"train.seed": seed} if seed is not None else {})
            run_name = f"{name}-{group_id[:8]}" + (f"-s{seed}" if seed is not None else "")
            overrides = tuple(f"{k}={toml_literal(v)}" for k, v in settings.items())
            overrides += (f"train.run_name={toml_literal(run_name)}",)
            resolved = resolve_config(
                experiment_ref, [*base_overrides, *overrides], config_file
            )  # fails here, before any run starts, on a bad key or value
            runs.append(
                PlannedRun(
                    group_id=group_id,
                    seed=seed,
                    config=Config(settings),
                    run_name=run_name,
                    overrides=overrides,
                    max_iters=resolved.train.max_iters,
                )
            )
    if len({r.config.config_id for r in runs}) != len(runs):
        raise ConfigError("two branches ended up with the same settings; check the random draws")
    return SweepPlan(
        name=name,
        experiment=experiment_ref,
        experiment_name=base.name,
        config_file=config_file,
        base_overrides=tuple(base_overrides),
        runs=tuple(runs),
        base=base,
    )


# --- running it -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    plan: SweepPlan
    branches: BranchContainer
    comparison: Comparison
    directory: Path
    plot: Path | None
    parent_run_id: str | None


class BranchFailed(MLPlaygroundError):
    """A branch's training process exited non-zero (its log says why)."""


def _tail(path: Path, lines: int = 5) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])


def _finished_summary(run_dir: Path, max_iters: int) -> dict[str, Any] | None:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    summary: dict[str, Any] = json.loads(summary_path.read_text("utf-8"))
    return summary if summary.get("iters", -1) >= max_iters else None


def _open_parent_run(plan: SweepPlan, workdir: Path, directory: Path) -> Any:
    from ml_playground.tracking.mlflow import MLflowTracker, default_tracking_uri

    id_file = directory / PARENT_ID_FILE
    tracker = MLflowTracker(
        tracking_uri=default_tracking_uri(workdir, plan.base.tracking.mlflow_uri),
        experiment=plan.base.tracking.mlflow_experiment or plan.experiment_name,
        run_name=f"sweep:{plan.name}",
        artifact_dir=workdir / "mlartifacts",
        run_id=id_file.read_text("utf-8").strip() if id_file.is_file() else None,
        tags={"ml_playground.sweep": plan.name},
    )
    id_file.write_text(tracker.run_id + "\n", "utf-8")
    return tracker


def run_sweep(
    plan: SweepPlan,
    workdir: Path,
    executor: Executor,
    *,
    parallel: int = 1,
    mlflow: bool | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> SweepResult:
    """Run every planned branch (finished ones are skipped) and write the report."""
    if parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    workdir = workdir.resolve()
    runs_dir = workdir / "runs" / plan.experiment_name
    directory = runs_dir / SWEEPS_DIR / plan.name
    directory.mkdir(parents=True, exist_ok=True)
    if mlflow is None:  # auto: on when MLflow is installed
        import importlib.util

        mlflow = importlib.util.find_spec("mlflow") is not None
    parent = _open_parent_run(plan, workdir, directory) if mlflow else None
    if parent is not None:
        parent.log_params(
            {
                "sweep": plan.name,
                "experiment": plan.experiment,
                "branches": len(plan.runs),
                "base_overrides": list(plan.base_overrides),
            }
        )

    # One dataset serves every branch; prepare it once here rather than racing in each branch.
    prepared = prepare_dataset(plan.base.data, workdir, plan.experiment_name)
    if not prepared.skipped:
        say(f"prepared dataset {prepared.directory}")
    env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if "OMP_NUM_THREADS" not in os.environ and executor.name != "ray":
        # Parallel branches share this machine's cores instead of each grabbing all of them
        # (Ray sets OMP_NUM_THREADS from each task's CPU reservation itself).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    tracking: tuple[str, ...] = ()
    if parent is not None:
        tracking = ("tracking.mlflow=true", f"tracking.mlflow_parent_run_id={parent.run_id}")
    by_id = {run.config.config_id: run for run in plan.runs}
    experiment_ref = (
        str(Path(plan.experiment).resolve())
        if plan.experiment.endswith(".toml")
        else plan.experiment
    )
    config_file = plan.config_file.resolve() if plan.config_file else None

    def train_branch(*, config: Config) -> dict[str, Any]:
        run = by_id[config.config_id]
        log_path = directory / "logs" / f"{run.run_name}.log"
        task = TrainTask(
            experiment=experiment_ref,
            overrides=(*plan.base_overrides, *run.overrides, *tracking),
            workdir=workdir,
            log_path=log_path,
            config_file=config_file,
            env=env,
        )
        say(f"start {run.run_name}: {' '.join(run.overrides[:-1]) or '(base config)'}")
        code = executor.run(task)
        summary_path = runs_dir / run.run_name / "summary.json"
        if code != 0 or not summary_path.is_file():
            say(f"FAILED {run.run_name} (exit {code}); log: {log_path}")
            raise BranchFailed(f"train exited {code}; log {log_path}:\n{_tail(log_path)}")
        summary: dict[str, Any] = json.loads(summary_path.read_text("utf-8"))
        best = summary.get("best_val_loss")
        say(f"done  {run.run_name}: best val loss {best if best is None else f'{best:.4f}'}")
        return summary

    skipped: dict[str, Branch] = {}
    to_run = []
    for run in plan.runs:
        summary = _finished_summary(runs_dir / run.run_name, run.max_iters)
        if summary is None:
            to_run.append(run.config)
        else:
            branch = Branch(run.config)
            branch.skip("finished in an earlier invocation of this sweep", output=summary)
            skipped[run.config.config_id] = branch
    if skipped:
        say(f"{len(skipped)} of {len(plan.runs)} runs finished earlier; skipping them")
    try:
        ran: BranchContainer = BranchContainer([])
        if to_run:
            ran = experiment(
                to_run, strategy=MultiBranch(max_concurrency=parallel), max_workers=parallel
            )(train_branch)()
    except BaseException:  # Ctrl-C: the children save their checkpoints; mark the parent
        if parent is not None:
            parent.close("KILLED")
        raise
    done = {b.config_id: b for b in ran} | skipped
    branches = BranchContainer([done[run.config.config_id] for run in plan.runs])
    records = [
        RunRecord(
            name=by_id[b.config_id].run_name,
            settings={k: v for k, v in b.config.items() if k != "train.seed"},
            summary=b.output if isinstance(b.output, dict) else None,
            seed=by_id[b.config_id].seed,
            status="failed" if b.status == "failed" else "success",
        )
        for b in branches
    ]
    comparison = compare(records)
    plot = _plot(runs_dir, branches, by_id, directory / "val_loss.png")
    (directory / "results.md").write_text(comparison.to_markdown(), "utf-8")
    report = {
        "name": plan.name,
        "experiment": plan.experiment,
        "base_overrides": list(plan.base_overrides),
        "parent_run_id": None if parent is None else parent.run_id,
        "comparison": comparison.to_dict(),
        "branches": [b.to_dict() | {"run_name": by_id[b.config_id].run_name} for b in branches],
    }
    (directory / "sweep.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    if parent is not None:
        best = comparison.groups[0].mean
        if best is not None:
            parent.log_metrics({"best_val_loss": best}, step=0)
        for artifact in (directory / "results.md", directory / "sweep.json", plot):
            if artifact is not None:
                parent.client.log_artifact(parent.run_id, str(artifact))
        parent.close("FAILED" if branches.failed() else "FINISHED")
    return SweepResult(
        plan, branches, comparison, directory, plot, None if parent is None else parent.run_id
    )


def _plot(
    runs_dir: Path, branches: BranchContainer, by_id: dict[str, PlannedRun], out: Path
) -> Path | None:
    """Val-loss curves of every run that logged one, labelled by what the sweep varied."""
    from ml_playground.analysis.plots import plot_runs

    sources: dict[str, Path] = {}
    for branch in branches:
        run = by_id[branch.config_id]
        if (runs_dir / run.run_name / "metrics.jsonl").is_file():
            label = ", ".join(f"{k}={v}" for k, v in run.config.items()) or run.run_name
            sources[label] = runs_dir / run.run_name
    if not sources:
        return None
    return plot_runs(sources, out, metrics=("val_loss",), title=f"sweep {out.parent.name}")
