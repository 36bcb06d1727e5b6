"""Which checkpoint of a run a command reads: `best` (falling back to `last`), `last`, or a path.

`sample`, `serve`, `evaluate`, `analyze`, `export` and `merge` all take `--checkpoint`. A short
run may end before its first evaluation improves on anything, so it has `last` but no `best`;
every command then uses `last` and says so, rather than failing on the default. One function,
so the commands cannot drift apart in what they accept or how they explain a missing run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ml_playground.errors import CheckpointError
from ml_playground.train.checkpoint import resolve_checkpoint


def find_run_checkpoint(
    run_dir: Path,
    which: str,
    *,
    verb: str,
    creator: str,
    say: Callable[[str], None],
    directory_ok: bool = False,
) -> Path:
    """The existing checkpoint `which` names in `run_dir`, or a CheckpointError saying what to run.

    `verb` completes the notice ("no `best` checkpoint yet; {verb} `last`"), `creator` is the
    command that makes the checkpoint ("ml-playground train tiny"), and `directory_ok` adds
    that a checkpoint directory may be passed instead of an experiment.
    """
    path = resolve_checkpoint(run_dir, which)
    if which == "best" and not path.exists():
        fallback = resolve_checkpoint(run_dir, "last")
        if fallback.exists():
            say(f"notice: no `best` checkpoint yet; {verb} `last`")
            return fallback
    if path.exists():
        return path
    if which not in ("best", "last"):
        raise CheckpointError(f"no checkpoint at {path}; check the --checkpoint path")
    raise CheckpointError(
        f"no checkpoint at {path}; run `{creator}` first (with the same --workdir and "
        f"train.run_name)" + (", or pass a checkpoint directory" if directory_ok else "")
    )
