"""Run `python -m ml_playground ...` in a subprocess, as a user runs it (for e2e/integration tests).

One copy of the environment rules every CLI test needs, so they cannot drift apart:
- `ML_PLAYGROUND_*` variables of the developer's shell are dropped (they would change configs);
- a wide, colourless, UTF-8 console, so assertions on output do not depend on the terminal;
- `HF_HUB_OFFLINE=1`: no command may reach a model hub during tests;
- `OMP_NUM_THREADS=1`, as tests/conftest.py sets for the test process: tiny models gain nothing
  from more threads, and spinning OpenMP threads crawl on a busy two-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess (see the module docstring), plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ML_PLAYGROUND")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"})
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ml-playground ARGS` in `cwd`; never raises on a non-zero exit (tests assert on it)."""
    return subprocess.run(
        [sys.executable, "-m", "ml_playground", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`result`, after asserting it exited 0 (the failure message carries its stderr)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result
