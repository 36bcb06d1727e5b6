"""Branch lifecycle: one-way, guarded transitions and a faithful record."""

from __future__ import annotations

import json

import pytest

from ml_playground.variants.branch import Branch, BranchContainer, BranchStatus, InvalidTransition
from ml_playground.variants.config import Config


def test_success_records_output_and_timing() -> None:
    branch = Branch(Config({"a": 1}))
    assert branch.status is BranchStatus.PENDING
    assert not branch.done
    branch.start()
    branch.succeed({"loss": 1.5})
    record = branch.to_dict()
    assert record["status"] == "success"
    assert record["output"] == {"loss": 1.5}
    assert record["duration_s"] is not None
    assert record["duration_s"] >= 0
    assert record["started_at"] <= record["ended_at"]
    json.dumps(record)


def test_failure_keeps_exception_and_traceback() -> None:
    branch = Branch(Config({"a": 1}))
    branch.start()
    try:
        raise ValueError("boom")
    except ValueError as exc:
        branch.fail(exc)
    info = branch.to_dict()["exception"]
    assert info["type"] == "ValueError"
    assert info["message"] == "boom"
    assert 'raise ValueError("boom")' in info["traceback"]


@pytest.mark.parametrize("finish", ["succeed", "fail"])
def test_cannot_finish_before_start(finish: str) -> None:
    branch = Branch(Config({}))
    with pytest.raises(InvalidTransition, match="before start"):
        getattr(branch, finish)(ValueError() if finish == "fail" else 1)


def test_finished_branch_refuses_changes() -> None:
    branch = Branch(Config({}))
    branch.start()
    branch.succeed(1)
    with pytest.raises(InvalidTransition, match="already success"):
        branch.fail(RuntimeError())
    with pytest.raises(InvalidTransition, match="already success"):
        branch.succeed(2)
    assert branch.output == 1
    with pytest.raises(InvalidTransition, match="already started"):
        branch.start()


def test_skip_only_before_start() -> None:
    skipped = Branch(Config({}))
    skipped.skip("done already", output={"best": 1})
    assert skipped.status is BranchStatus.SKIPPED
    assert skipped.output == {"best": 1}
    started = Branch(Config({"x": 1}))
    started.start()
    with pytest.raises(InvalidTransition, match="cannot skip"):
        started.skip("late")


def test_container_filters_and_lookup() -> None:
    ok, bad, skip = Branch(Config({"a": 1})), Branch(Config({"a": 2})), Branch(Config({"a": 3}))
    ok.start()
    ok.succeed("fine")
    bad.start()
    bad.fail(RuntimeError("x"))
    skip.skip("n/a")
    container = BranchContainer([ok, bad, skip])
    assert list(container.successful()) == [ok]
    assert list(container.failed()) == [bad]
    assert list(container.skipped()) == [skip]
    assert container.by_config_id(bad.config_id) is bad
    assert container.outputs() == {ok.config_id: "fine"}
    assert container[0] is ok
    assert len(container[1:]) == 2
    with pytest.raises(KeyError, match="no branch"):
        container.by_config_id("nope")
