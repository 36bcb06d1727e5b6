"""Serving several checkpoints as variants of one model: A/B (round-robin) or shadow traffic.

- round-robin: request k is answered by variant k mod n (the `RoundRobin` strategy of
  `ml_playground.variants` picks); the response says which variant answered.
- shadow: the first variant answers every request; each other variant gets the same request in
  the background, and its output goes to a JSONL log (one line per shadow branch: variant,
  prompt, texts, status, timing), never to the client. Shadow work queues on its own thread, so it
  cannot delay answers beyond sharing the CPU/GPU, and the queue drains before the process exits.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ml_playground.errors import ConfigError
from ml_playground.generate.service import LoadedModel
from ml_playground.serve.engine import CompletionJob, Engine
from ml_playground.variants.branch import BranchContainer
from ml_playground.variants.config import Config
from ml_playground.variants.experiment import experiment
from ml_playground.variants.strategies import MultiBranch, RoundRobin

STRATEGIES = ("round-robin", "shadow")


def tokenizer_fingerprint(loaded: LoadedModel) -> str:
    """A hash of the checkpoint's tokenizer files: variants must encode prompts identically."""
    digest = hashlib.sha256()
    directory = loaded.checkpoint.tokenizer_dir
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class VariantRouter:
    """Chooses the answering variant per request and runs shadow variants in the background."""

    def __init__(
        self,
        variants: Mapping[str, LoadedModel],
        strategy: str,
        *,
        max_concurrency: int = 1,
        shadow_log: Path | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown serving strategy '{strategy}'; choose {STRATEGIES}")
        if len(variants) < 2:
            raise ConfigError("serving variants needs at least two --variant checkpoints")
        prints = {name: tokenizer_fingerprint(loaded) for name, loaded in variants.items()}
        if len(set(prints.values())) > 1:
            raise ConfigError(
                "variants must share one tokenizer (a prompt must mean the same tokens to each); "
                f"these differ: {', '.join(variants)}"
            )
        self.strategy = strategy
        self.variants = dict(variants)
        self.engines = {name: Engine(loaded, max_concurrency) for name, loaded in variants.items()}
        self.primary = next(iter(variants))
        self.shadow_log = shadow_log
        configs = [
            Config({"checkpoint": str(loaded.checkpoint.path)}, config_id=name)
            for name, loaded in variants.items()
        ]
        self._round_robin = RoundRobin()

        async def pick(*, config: Config) -> str:
            return config.config_id

        self._pick = experiment(configs, strategy=self._round_robin)(pick)

        def shadow_answer(jobs: Sequence[CompletionJob], *, config: Config) -> list[str]:
            results = self.engines[config.config_id].run_blocking(jobs)
            return [result.text for result in results]

        self._shadows = experiment(configs[1:], strategy=MultiBranch())(shadow_answer)
        self._background = ThreadPoolExecutor(1, thread_name_prefix="ml-playground-shadow")
        self._log_lock = threading.Lock()
        self._pending: list[Future[None]] = []

    @property
    def block_size(self) -> int:
        return min(loaded.model.block_size for loaded in self.variants.values())

    async def choose(self) -> str:
        """The variant that answers this request."""
        if self.strategy == "shadow":
            return self.primary
        chosen: str = await self._pick()
        return chosen

    def shadow(
        self, request_id: str, prompts: Sequence[str], jobs: Sequence[CompletionJob]
    ) -> None:
        """Queue the request for every shadow variant (no-op under round-robin)."""
        if self.strategy != "shadow":
            return
        future = self._background.submit(self._run_shadows, request_id, list(prompts), list(jobs))
        with self._log_lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]

    def _run_shadows(self, request_id: str, prompts: list[str], jobs: list[CompletionJob]) -> None:
        branches: BranchContainer = self._shadows(jobs)
        if self.shadow_log is None:
            return
        lines = []
        for branch in branches:
            record: dict[str, Any] = branch.to_dict()
            lines.append(
                json.dumps(
                    {
                        "request_id": request_id,
                        "variant": branch.config_id,
                        "prompts": prompts,
                        "texts": record["output"],
                        "status": record["status"],
                        "started_at": record["started_at"],
                        "duration_s": record["duration_s"],
                        "exception": record["exception"],
                    }
                )
            )
        with self._log_lock:
            self.shadow_log.parent.mkdir(parents=True, exist_ok=True)
            with self.shadow_log.open("a", encoding="utf-8") as log:
                log.write("".join(line + "\n" for line in lines))

    def wait_for_shadows(self, timeout: float | None = None) -> None:
        """Block until queued shadow work is done (tests; shutdown)."""
        with self._log_lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout)

    def close(self) -> None:
        self._background.shutdown(wait=True)
        for engine in self.engines.values():
            engine.close()
