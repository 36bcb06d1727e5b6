"""Every package folder explains itself: a README naming each of its modules, with an example."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "ml_playground"
PACKAGES = sorted(p.parent for p in PACKAGE.rglob("__init__.py"))


def test_the_package_tree_was_found() -> None:
    assert PACKAGE in PACKAGES
    assert PACKAGE / "config" in PACKAGES


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_each_package_has_a_readme_naming_its_modules(package: Path) -> None:
    readme = package / "README.md"
    assert readme.is_file(), f"{package} has no README.md (purpose, files, key APIs, an example)"
    text = readme.read_text("utf-8")
    modules = [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    unnamed = [name for name in modules if name not in text]
    assert not unnamed, f"{readme} does not mention {', '.join(unnamed)}"
    assert "```" in text, f"{readme} has no example (a fenced code block)"
