"""Shared pieces of the benchmarks: paths, device timing, rows run in fresh processes, tables.

Each row of a time-to-loss benchmark runs in its own Python process (`run_rows`), as a user's
`ml-playground train` would: no compiled code, allocator state, thread setting or warm cache
carries over from one row to the next. Inside the process, the clock starts when `train()` is
called, so model build, `torch.compile` and every evaluation and checkpoint count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ml_playground.config.loading import resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.callbacks import Callback, EvalEvent, RunStart, TrainControl
from ml_playground.train.loop import train

REPO = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULT_PREFIX = "BENCH-ROW-JSON "


def require_file(path: Path) -> Path:
    """The corpus, or exit 2 with one line saying where it was expected and how to point to it."""
    if not path.is_file():
        print(
            f"error: {path} not found; these benchmarks train on tinyshakespeare (nanoGPT's "
            f"input.txt, 1,115,394 bytes): put it there, or pass --data PATH",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return path.resolve()


def machine() -> str:
    """One line naming the hardware a table was measured on."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU cores{load} (torch {torch.__version__})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_windows(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int, repeats: int
) -> list[float]:
    """Seconds per step of each of `repeats` windows of `steps` steps, after `warmup` steps.

    On CUDA the windows are timed with CUDA events (device time between the first and last
    kernel, no host clock); elsewhere with the host clock around a synchronised window.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    per_step = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                step()
            end.record()
            end.synchronize()
            per_step.append(start.elapsed_time(end) / 1000.0 / steps)
        else:
            began = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            per_step.append((time.perf_counter() - began) / steps)
    return per_step


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (it pastes into benchmarks/README.md as it is)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


# --- time to a target validation loss --------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One benchmark row: a preset plus overrides, and how the process is set up."""

    name: str
    overrides: tuple[str, ...] = ()
    threads: int | None = None  # torch.set_num_threads; None = torch's default
    note: str = ""


@dataclass
class TargetWatch(Callback):
    """Records the wall time of every evaluation; stops the run at the target if asked."""

    target: float
    stop_at_target: bool
    started: float = field(default_factory=time.perf_counter)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # iter, val, seconds
    control: TrainControl | None = None

    def on_train_start(self, event: RunStart) -> None:
        self.control = event.control

    def on_eval(self, event: EvalEvent) -> None:
        if event.iter == 0:
            return  # the untrained model: reaching a target there is no result
        self.evals.append((event.iter, event.val_loss, time.perf_counter() - self.started))
        if self.stop_at_target and event.val_loss <= self.target and self.control is not None:
            self.control.request_stop(f"val loss {event.val_loss:.4f} <= {self.target}")

    def first_at_target(self) -> tuple[int, float, float] | None:
        return next((e for e in self.evals if e[1] <= self.target), None)


def process_cpu_s() -> float:
    """CPU seconds this process (all its threads, and compile workers it waited for) used.

    On a machine shared with other work, wall time grows with the load; the CPU time of a
    one-thread row stays close to what the row takes alone, so both are reported.
    """
    try:
        import resource  # POSIX only
    except ImportError:
        return time.process_time()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_row_here(
    preset: str, row: Row, data: Path, target: float, stop_at_target: bool, workdir: Path
) -> dict[str, Any]:
    """Train one row in this process; the measurements as a JSON-able dict."""
    if row.threads is not None:
        torch.set_num_threads(row.threads)
    overrides = [
        f"data.path={data.as_posix()}",
        "tracking.tensorboard=false",
        f"train.run_name={row.name}",
        *row.overrides,
    ]
    config = resolve_config(preset, overrides)
    prepare_dataset(config.data, workdir, config.name)  # reused when already prepared
    watch = TargetWatch(target, stop_at_target)
    cpu_before = process_cpu_s()
    result = train(config, workdir, resume=False, callbacks=[watch])
    wall = time.perf_counter() - watch.started
    cpu = process_cpu_s() - cpu_before
    hit = watch.first_at_target()
    summary = result.summary
    return {
        "row": row.name,
        "wall_s": wall,
        "cpu_s": cpu,
        "target_s": hit[2] if hit else None,
        "target_iter": hit[0] if hit else None,
        "target_val": hit[1] if hit else None,
        "best_val": summary["best_val_loss"],
        "best_iter": summary["best_iter"],
        "iters": summary["iters"],
        "tokens_per_s": summary["tokens_per_s"],
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "threads": torch.get_num_threads(),
        "overrides": list(row.overrides),
    }


def row_arguments(parser: argparse.ArgumentParser, preset: str, target: float, full: bool) -> None:
    """The flags every time-to-loss benchmark takes (`full`: train to max_iters by default)."""
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--data", type=Path, default=TINYSHAKESPEARE, help="tinyshakespeare.txt")
    parser.add_argument("--preset", default=preset, help=f"experiment preset (default {preset})")
    parser.add_argument("--target", type=float, default=target, help="validation loss to reach")
    parser.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=full,
        help="train every row to max_iters, or stop at the first evaluation that reaches the "
        f"target (default: {'--full' if full else '--no-full'})",
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="reuse torch.compile's on-disk cache (default: a fresh cache per row, compile cold)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads for every row (default: torch's)"
    )
    parser.add_argument("--workdir", type=Path, help="keep datasets and runs here")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in-process
    parser.add_argument("--json-out", type=Path, help="write the measured rows as JSON here")
    parser.add_argument(
        "overrides", nargs="*", help="KEY=VALUE config overrides applied to every row"
    )


def run_rows(args: argparse.Namespace, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each selected row in a fresh Python process; their results, in order."""
    by_name = {row.name: row for row in rows}
    if args.row is not None:  # we are the child process
        row = by_name[args.row]
        threads = args.threads if args.threads is not None else row.threads
        row = Row(row.name, (*row.overrides, *args.overrides), threads, row.note)
        result = run_row_here(args.preset, row, args.data, args.target, not args.full, args.workdir)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        raise SystemExit(0)

    selected = [by_name[name] for name in args.rows.split(",")] if args.rows else list(rows)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    results = []
    for row in selected:
        env = dict(os.environ)
        if not args.warm_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
        threads = args.threads if args.threads is not None else row.threads
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [
            sys.executable,
            str(Path(sys.argv[0]).resolve()),
            "--row",
            row.name,
            "--preset",
            args.preset,
            "--data",
            str(args.data),
            "--target",
            str(args.target),
            "--workdir",
            str(workdir),
            "--full" if args.full else "--no-full",
            *(["--threads", str(args.threads)] if args.threads is not None else []),
            *args.overrides,
        ]
        print(f"[{row.name}] {' '.join(row.overrides) or '(preset as is)'}", file=sys.stderr)
        began = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            print(f"[{row.name}] failed with exit code {done.returncode}", file=sys.stderr)
            results.append({"row": row.name, "failed": done.returncode})
            continue
        result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
        result["process_s"] = time.perf_counter() - began
        results.append(result)
        print(f"[{row.name}] {json.dumps(result)}", file=sys.stderr)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return results


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def target_table(
    title: str, rows: Sequence[Row], results: Sequence[dict[str, Any]], target: float
) -> None:
    notes = {row.name: row.note for row in rows}
    table = []
    for result in results:
        if "failed" in result:
            table.append([result["row"], "failed", *[""] * 8])
            continue
        table.append(
            [
                result["row"],
                fmt(result["target_s"], 1, " s"),
                result["target_iter"] if result["target_iter"] is not None else "—",
                f"{fmt(result['best_val'], 4)} @ {result['best_iter']}",
                result["iters"],
                fmt(result["wall_s"], 1, " s"),
                fmt(result["cpu_s"], 1, " s"),
                result["threads"],
                f"{result['tokens_per_s'] / 1000:.1f}k",
                notes.get(result["row"], ""),
            ]
        )
    print_table(
        title,
        [
            "row",
            f"time to val ≤ {target}",
            "at iter",
            "best val @ iter",
            "iters run",
            "train() wall",
            "CPU time",
            "threads",
            "tokens/s",
            "what changes",
        ],
        table,
    )
