"""Completions on a shared model: one prompt's `n` choices decode as one batch (with the KV cache
of `generate.service`), and a queue makes concurrent requests take turns.

Nothing here knows HTTP. `run_completion` is plain blocking code; `Engine` runs it in a worker
thread so the event loop stays free, and streams text deltas back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ml_playground.generate.service import (
    GenerationResult,
    GenerationSettings,
    LoadedModel,
    generate_batch,
    generate_from_ids,
)


@dataclass(frozen=True)
class CompletionJob:
    """One prompt and how to continue it (`n` choices, decoded together as one batch).

    `prompt_ids`, when set, are the tokens to continue and `prompt` only their text (a chat
    rendered through the template, whose special tokens plain encoding would not give back).
    """

    prompt: str
    n: int
    settings: GenerationSettings
    prompt_ids: tuple[int, ...] | None = None


class _Cancelled(Exception):
    """Raised from the text callback to stop a generation whose client has gone away."""


def run_completion(
    loaded: LoadedModel,
    job: CompletionJob,
    on_text: Callable[[int, str], None] | None = None,
    cancelled: threading.Event | None = None,
) -> list[GenerationResult]:
    """Generate `job.n` continuations of one prompt as one batch (blocking; KV cache).

    `on_text(choice, delta)` receives text as soon as it is final (text that could still begin
    a stop sequence is held back). A choice finishes with "stop" at a stop sequence or the
    tokenizer's end-of-text token, with "length" after `max_new_tokens`. A seed reproduces the
    choices whatever else the process is doing (the batch has its own generator).
    """

    def forward(index: int, delta: str) -> None:
        if cancelled is not None and cancelled.is_set():
            raise _Cancelled
        if on_text is not None:
            on_text(index, delta)

    try:
        if job.prompt_ids is not None:
            return generate_from_ids(loaded, [job.prompt_ids] * job.n, job.settings, forward)
        return generate_batch(loaded, [job.prompt] * job.n, job.settings, forward)
    except _Cancelled:
        return []


@dataclass(frozen=True)
class Delta:
    """Streamed text for one choice (`index` counts across all prompts of a request)."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    choice: GenerationResult


@dataclass
class _Stream:
    queue: asyncio.Queue[Delta | Finished | BaseException | None] = field(
        default_factory=asyncio.Queue
    )
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Serialises generation on one shared model and keeps it off the event loop.

    Requests wait their turn on an asyncio semaphore (cheap, in arrival order); the work itself
    runs in a small thread pool and additionally holds a thread semaphore, so even a request
    whose client went away cannot overlap the next one on the model.
    """

    def __init__(self, loaded: LoadedModel, max_concurrency: int = 1) -> None:
        self.loaded = loaded
        self.max_concurrency = max_concurrency
        self._turn = asyncio.Semaphore(max_concurrency)
        self._model_slots = threading.BoundedSemaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ml-playground-gen")
        self._workers: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run_all(
        self,
        jobs: Sequence[CompletionJob],
        on_text: Callable[[int, str], None] | None,
        cancelled: threading.Event | None,
    ) -> list[GenerationResult]:
        with self._model_slots:
            results: list[GenerationResult] = []
            for job in jobs:
                if cancelled is not None and cancelled.is_set():
                    break
                offset = len(results)

                def forward(row: int, text: str, offset: int = offset) -> None:
                    if on_text is not None:
                        on_text(offset + row, text)

                results += run_completion(self.loaded, job, forward, cancelled)
            return results

    def run_blocking(self, jobs: Sequence[CompletionJob]) -> list[GenerationResult]:
        """All choices of all jobs, on the calling thread (shadow variants run this way)."""
        return self._run_all(jobs, None, None)

    async def complete(self, jobs: Sequence[CompletionJob]) -> list[GenerationResult]:
        """All choices of all jobs, in order (prompt 0's n choices, then prompt 1's, ...)."""
        async with self._turn:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._run_all, jobs, None, None)

    async def stream(self, jobs: Sequence[CompletionJob]) -> AsyncIterator[Delta | Finished]:
        """Text deltas as they are generated, then one `Finished` per choice.

        Closing the iterator early (the client disconnected) tells the worker to stop.
        """
        loop = asyncio.get_running_loop()
        stream = _Stream()
        put = stream.queue.put_nowait

        def on_text(index: int, text: str) -> None:
            loop.call_soon_threadsafe(put, Delta(index, text))

        async def work() -> None:
            try:
                async with self._turn:
                    if stream.cancelled.is_set():
                        return
                    choices = await loop.run_in_executor(
                        self._pool, self._run_all, jobs, on_text, stream.cancelled
                    )
                for index, choice in enumerate(choices):
                    put(Finished(index, choice))
                put(None)
            except Exception as exc:  # handed to the consumer, which re-raises it
                put(exc)

        task = asyncio.create_task(work())
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)
        try:
            while (item := await stream.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.cancelled.set()
