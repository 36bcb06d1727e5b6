"""Helpers for `make mutation`: snapshot the tree for mutmut, and report kill rates per module.

mutmut 3 writes its `mutants/` folder into the directory it runs in and copies `src/`,
`tests/` (and `also_copy`) into it at the start. Running it in a snapshot under
`.cache/mutmut/` keeps the repository root clean and lets a long run go on while the working
tree changes.

    python tools/mutation.py snapshot .cache/mutmut
    python tools/mutation.py report --survivors .cache/mutmut 'ml_playground.config.loading.*'

The report reads mutmut's own result files (`mutants/**/*.py.meta`), so it needs no mutmut
import and can be re-run at any time.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit-code → status table (mutmut/stats.py), reduced to what the report shows.
KILLED = {1, 3, 37}
SURVIVED = {0}
TIMEOUT = {24, -24, 152, 255, 36}
NO_TESTS = {5, 33}
SNAPSHOT = ("src", "tests", "docs", "pyproject.toml")


def snapshot(target: Path) -> None:
    """Copy src/, tests/, docs/ and pyproject.toml into `target`, keeping modification times.

    mutmut regenerates a module's mutants only when the source is newer than them, so the
    copies must keep their mtimes (`copy2`) for reruns to reuse unchanged modules.
    """
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SNAPSHOT:
        source, dest = Path(name), target / name
        if dest.is_dir():
            shutil.rmtree(dest)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=ignore)
        else:
            shutil.copy2(source, dest)


def status_of(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in TIMEOUT:
        return "timeout"
    if code in NO_TESTS:
        return "no tests"
    return "other"


def load_results(workdir: Path, patterns: list[str]) -> dict[str, dict[str, str]]:
    """module → {mutant name → status}, for mutants matching any of `patterns` (all if none)."""
    results: dict[str, dict[str, str]] = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
        for name, code in codes.items():
            if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            module = name.split(".x_")[0].split(".xǁ")[0]
            results.setdefault(module, {})[name] = status_of(code)
    return results


def report(workdir: Path, patterns: list[str], survivors: bool) -> int:
    results = load_results(workdir, patterns)
    if not results:
        print(f"no mutmut results in {workdir}/mutants; run `make mutation` first")
        return 1
    print("| module | mutants | killed | timeout | survived | no tests | not run | kill rate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total: Counter[str] = Counter()
    for module, statuses in results.items():
        counts = Counter(statuses.values())
        total.update(counts)
        print(_row(module, counts))
    print(_row("**all**", total))
    if survivors:
        for statuses in results.values():
            for name, status in sorted(statuses.items()):
                if status in ("survived", "no tests"):
                    print(f"{status}: {name}")
    return 0


def _row(label: str, counts: Counter[str]) -> str:
    # A timeout counts as a kill (the mutant made the tests hang), as mutmut's own score does.
    ran = counts["killed"] + counts["timeout"] + counts["survived"] + counts["no tests"]
    rate = f"{100 * (counts['killed'] + counts['timeout']) / ran:.1f}%" if ran else "-"
    return (
        f"| {label} | {sum(counts.values())} | {counts['killed']} | {counts['timeout']} | "
        f"{counts['survived']} | {counts['no tests']} | {counts['not checked']} | {rate} |"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    snap = commands.add_parser("snapshot", help="copy the tree into DIR for mutmut")
    snap.add_argument("dir", type=Path)
    rep = commands.add_parser("report", help="kill rate per module, as a Markdown table")
    rep.add_argument("dir", type=Path)
    rep.add_argument("patterns", nargs="*", help="mutant name globs (default: all)")
    rep.add_argument("--survivors", action="store_true", help="also list surviving mutants")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.dir)
        return 0
    return report(args.dir, args.patterns, args.survivors)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
