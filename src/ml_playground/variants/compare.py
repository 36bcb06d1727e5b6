"""Compare runs: group seeds of one config, rank configs by best val loss, test the winner.

A sweep's verdict must not rest on one lucky seed. Runs whose settings differ only in the seed
(and run name, tracking) form one group; each group shows mean ± std of its best val loss, and
when the top two groups have at least two seeds each, Welch's t-test (unequal variances) says
whether the best beats the runner-up at p < 0.01.
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.errors import MLPlaygroundError

SIGNIFICANCE = 0.01
# Settings that name, seed or observe a run without changing what it learns.
IGNORED_PREFIXES = ("train.run_name", "train.seed", "tracking.", "sample.", "serve.")


@dataclass(frozen=True)
class RunRecord:
    """One run as the comparison sees it: its name, its settings, and its summary if finished."""

    name: str
    settings: Mapping[str, Any]
    summary: Mapping[str, Any] | None
    seed: int | None = None
    status: str = "success"


@dataclass
class GroupResult:
    label: str
    settings: dict[str, Any]
    runs: list[str] = field(default_factory=list)
    best_val: list[float] = field(default_factory=list)
    best_iters: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.best_val) if self.best_val else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.best_val) if len(self.best_val) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "settings": self.settings,
            "runs": self.runs,
            "best_val_loss": self.best_val,
            "mean_best_val_loss": self.mean,
            "std_best_val_loss": self.std,
            "best_iters": self.best_iters,
            "mean_wall_s": statistics.fmean(self.wall_s) if self.wall_s else None,
            "mean_tokens_per_s": statistics.fmean(self.tokens_per_s) if self.tokens_per_s else None,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class WelchResult:
    best: str
    runner_up: str
    t: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE and self.t < 0

    def verdict(self) -> str:
        if self.significant:
            return (
                f"'{self.best}' beats '{self.runner_up}' at p = {self.p:.2g} < {SIGNIFICANCE} "
                f"(Welch's t = {self.t:.2f})"
            )
        return (
            f"'{self.best}' does not beat '{self.runner_up}' significantly "
            f"(Welch's t-test p = {self.p:.2g}, needs < {SIGNIFICANCE}): more seeds, or call it "
            f"a tie"
        )


@dataclass
class Comparison:
    groups: list[GroupResult]
    varying: list[str]
    test: WelchResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "varying": self.varying,
            "groups": [g.to_dict() for g in self.groups],
            "welch": None
            if self.test is None
            else {
                "best": self.test.best,
                "runner_up": self.test.runner_up,
                "t": self.test.t,
                "p": self.test.p,
                "significant": self.test.significant,
            },
        }

    def rows(self) -> list[list[str]]:
        """Table cells: rank, config, seeds, best val (mean ± std), best iter, wall, tok/s."""
        table = []
        for rank, group in enumerate(self.groups, start=1):
            data = group.to_dict()
            if group.mean is None:
                loss = "failed"
            elif group.std is None:
                loss = f"{group.mean:.4f}"
            else:
                loss = f"{group.mean:.4f} ± {group.std:.4f}"
            seeds = f"{len(group.best_val)}" + (f" ({group.failed} failed)" if group.failed else "")
            table.append(
                [
                    str(rank),
                    group.label,
                    seeds,
                    loss,
                    ",".join(map(str, group.best_iters)) or "-",
                    "-" if data["mean_wall_s"] is None else f"{data['mean_wall_s']:.1f}",
                    "-"
                    if data["mean_tokens_per_s"] is None
                    else f"{data['mean_tokens_per_s']:,.0f}",
                ]
            )
        return table

    HEADER = ("#", "config", "seeds", "best val loss", "best iter", "wall s", "tok/s")

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.test is not None:
            lines += ["", self.test.verdict()]
        return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED_PREFIXES)


def compare(records: Sequence[RunRecord]) -> Comparison:
    """Group `records` by their settings (seed aside), rank by mean best val loss, test top 2."""
    if not records:
        raise MLPlaygroundError("no runs to compare")
    groups: dict[str, GroupResult] = {}
    keyed = []
    for record in records:
        settings = {k: v for k, v in record.settings.items() if not _ignored(k)}
        key = json.dumps(settings, sort_keys=True, default=str)
        keyed.append((key, settings, record))
    all_keys = sorted({k for _, settings, _ in keyed for k in settings})
    distinct = {key: settings for key, settings, _ in keyed}
    varying = [
        k
        for k in all_keys
        if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in distinct.values()}) > 1
    ]
    for key, settings, record in keyed:
        if key not in groups:
            shown = {k: settings.get(k) for k in varying}
            label = ", ".join(f"{k}={_format(v)}" for k, v in shown.items()) or "(base config)"
            groups[key] = GroupResult(label=label, settings=shown)
        group = groups[key]
        group.runs.append(record.name)
        summary = record.summary
        best = None if summary is None else summary.get("best_val_loss")
        if record.status != "success" or best is None or not math.isfinite(best):
            group.failed += 1
            continue
        assert summary is not None
        group.best_val.append(float(best))
        if summary.get("best_iter") is not None:
            group.best_iters.append(int(summary["best_iter"]))
        if summary.get("wall_s") is not None:
            group.wall_s.append(float(summary["wall_s"]))
        if summary.get("tokens_per_s") is not None:
            group.tokens_per_s.append(float(summary["tokens_per_s"]))
    ranked = sorted(groups.values(), key=lambda g: (g.mean is None, g.mean or 0.0))
    return Comparison(ranked, varying, welch(ranked))


def welch(ranked: Sequence[GroupResult]) -> WelchResult | None:
    """Welch's t-test of the best group against the runner-up, when both have >= 2 seeds."""
    scored = [g for g in ranked if len(g.best_val) >= 2]
    if len(scored) < 2 or scored[0] is not ranked[0]:
        return None
    best, runner_up = scored[0], scored[1]
    from scipy import stats

    if statistics.pstdev(best.best_val) == 0 and statistics.pstdev(runner_up.best_val) == 0:
        # Zero variance in both: the t statistic is undefined; equal means are a tie,
        # different means are as certain as a deterministic result can be.
        same = best.mean == runner_up.mean
        return WelchResult(
            best.label, runner_up.label, 0.0 if same else -math.inf, 1.0 if same else 0.0
        )
    result = stats.ttest_ind(best.best_val, runner_up.best_val, equal_var=False)
    return WelchResult(best.label, runner_up.label, float(result.statistic), float(result.pvalue))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_run(run_dir: Path) -> RunRecord:
    """A run directory (resolved `config.toml`, `summary.json` when finished) as a record."""
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise MLPlaygroundError(f"{run_dir} has no config.toml; is it a run directory?")
    settings = flatten(tomllib.loads(config_path.read_text("utf-8")))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text("utf-8")) if summary_path.is_file() else None
    status = "success" if summary is not None else "unfinished"
    seed = settings.get("train.seed")
    return RunRecord(
        run_dir.name, settings, summary, seed if isinstance(seed, int) else None, status
    )


def find_runs(runs_dir: Path) -> list[Path]:
    """Every run directory under `runs/<experiment>/` (those with a saved config)."""
    if not runs_dir.is_dir():
        return []
    return sorted(p.parent for p in runs_dir.glob("*/config.toml"))
