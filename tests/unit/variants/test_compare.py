"""Run comparison: grouping seeds, ranking, labels, and Welch's t-test against scipy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tomli_w
from scipy import stats

from ml_playground.variants.compare import RunRecord, compare, find_runs, read_run


def _record(name: str, lr: float, seed: int, best: float | None, **extra: object) -> RunRecord:
    settings = {"train.learning_rate": lr, "train.seed": seed, "train.run_name": name} | extra
    summary = None if best is None else {"best_val_loss": best, "best_iter": 5, "wall_s": 2.0}
    return RunRecord(name, settings, summary, seed, "success" if best is not None else "failed")


def test_groups_seeds_ranks_by_mean_and_labels_by_what_varies() -> None:
    records = [
        _record("a1", 1e-3, 1, 1.50, **{"model.n_layer": 2}),
        _record("a2", 1e-3, 2, 1.52, **{"model.n_layer": 2}),
        _record("b1", 3e-4, 1, 1.40, **{"model.n_layer": 2}),
        _record("b2", 3e-4, 2, 1.41, **{"model.n_layer": 2}),
        _record("c1", 1e-2, 1, None, **{"model.n_layer": 2}),
    ]
    result = compare(records)
    assert result.varying == ["train.learning_rate"]
    assert [g.label for g in result.groups] == [
        "train.learning_rate=0.0003",
        "train.learning_rate=0.001",
        "train.learning_rate=0.01",
    ]
    assert result.groups[0].runs == ["b1", "b2"]
    assert result.groups[0].mean == pytest.approx(1.405)
    assert result.groups[0].std == pytest.approx(0.00707, abs=1e-4)
    assert result.groups[2].failed == 1
    assert result.rows()[0][3] == "1.4050 ± 0.0071"
    assert result.rows()[2][3] == "failed"


def test_welch_matches_scipy_and_decides_at_001() -> None:
    best = [1.40, 1.41, 1.39, 1.405]
    other = [1.50, 1.52, 1.49, 1.51]
    records = [_record(f"b{i}", 1, i, v) for i, v in enumerate(best)]
    records += [_record(f"o{i}", 2, i, v) for i, v in enumerate(other)]
    test = compare(records).test
    expected = stats.ttest_ind(best, other, equal_var=False)
    assert test is not None
    assert test.p == pytest.approx(expected.pvalue)
    assert test.t == pytest.approx(expected.statistic)
    assert test.significant
    assert "beats" in test.verdict()


def test_one_lucky_seed_is_not_a_verdict() -> None:
    records = [_record("a0", 1, 0, 1.40), _record("a1", 1, 1, 1.60)]
    records += [_record("b0", 2, 0, 1.45), _record("b1", 2, 1, 1.55)]
    test = compare(records).test
    assert test is not None
    assert not test.significant
    assert "does not beat" in test.verdict()
    assert compare([_record("a", 1, 0, 1.0), _record("b", 2, 0, 2.0)]).test is None


def test_identical_deterministic_runs_are_a_tie() -> None:
    records = [_record(f"a{i}", 1, i, 1.0) for i in range(2)]
    records += [_record(f"b{i}", 2, i, 1.0) for i in range(2)]
    test = compare(records).test
    assert test is not None
    assert test.p == 1.0
    assert not test.significant
    assert math.isfinite(test.t)


def test_read_run_and_find_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "exp"
    for name, lr, best in (("main", 1e-3, 1.5), ("other", 3e-4, None)):
        run = runs / name
        run.mkdir(parents=True)
        config = {"train": {"learning_rate": lr, "seed": 7, "run_name": name}}
        (run / "config.toml").write_text(tomli_w.dumps(config))
        if best is not None:
            (run / "summary.json").write_text(json.dumps({"best_val_loss": best}))
    (runs / "sweeps" / "s").mkdir(parents=True)
    found = find_runs(runs)
    assert [p.name for p in found] == ["main", "other"]
    main, other = (read_run(p) for p in found)
    assert main.settings["train.learning_rate"] == 1e-3
    assert main.seed == 7
    assert other.status == "unfinished"
    assert compare([main, other]).groups[0].runs == ["main"]
