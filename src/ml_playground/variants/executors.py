"""Where a sweep's training runs execute: local processes, or tasks on a Ray cluster.

Each branch is one `ml-playground train …` command in its own process — the same command a user
would type, so a branch behaves exactly like a hand-started run (checkpoints, resume, Ctrl-C) and
a crash in one cannot corrupt another. The executor only decides *where* that process runs.
Ray workers need the package installed and the workdir on a filesystem every node sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ml_playground.errors import ConfigError


@dataclass(frozen=True)
class TrainTask:
    """One branch's training command: what to run, with which overrides, logging where."""

    experiment: str
    overrides: tuple[str, ...]
    workdir: Path
    log_path: Path
    config_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, python: str = sys.executable) -> list[str]:
        command = [python, "-m", "ml_playground", "train", self.experiment, *self.overrides]
        command += ["--workdir", str(self.workdir)]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        return command


def run_command(argv: list[str], env: dict[str, str], log_path: str) -> int:
    """Run `argv` with `env` layered over this process's environment; output → `log_path`."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        completed = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ | env, check=False
        )
    return completed.returncode


class Executor(Protocol):
    """Runs one task to completion (blocking) and returns its exit code."""

    name: str

    def run(self, task: TrainTask) -> int: ...

    def close(self) -> None: ...


class LocalExecutor:
    """A subprocess on this machine per branch."""

    name = "local"

    def run(self, task: TrainTask) -> int:
        return run_command(task.argv(), task.env, str(task.log_path))

    def close(self) -> None:
        return None


class RayExecutor:
    """Each branch as a Ray task (1 CPU, or `num_gpus` GPUs) on the cluster at `address`.

    `address=None` or "local" starts a private single-node instance (as `ray.init()` does);
    "auto" or "HOST:PORT" joins an existing cluster.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0):
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: pip install 'ml_playground[ray]'") from exc
        self._ray: Any = ray
        self._owns_runtime = not ray.is_initialized()
        if self._owns_runtime:
            ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(run_command)

    def run(self, task: TrainTask) -> int:
        python = sys.executable  # the cluster runs the same environment (documented)
        result: int = self._ray.get(
            self._remote.remote(task.argv(python), task.env, str(task.log_path))
        )
        return result

    def close(self) -> None:
        if self._owns_runtime and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(name: str, address: str | None = None) -> Executor:
    if name == "local":
        if address is not None:
            raise ConfigError("--address only applies to --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ConfigError(f"unknown executor '{name}'; choose local or ray")
