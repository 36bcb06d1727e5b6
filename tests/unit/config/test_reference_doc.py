"""docs/configuration.md is generated from the schema; these tests keep the two in step."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, model_validator

from ml_playground.config.reference import REGENERATE, render_reference
from ml_playground.config.schema import ExperimentConfig, Section

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_committed_configuration_reference_matches_the_schema() -> None:
    expected = render_reference()
    actual = REFERENCE.read_text("utf-8") if REFERENCE.is_file() else ""
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), "docs/configuration.md", "schema", n=0
        )
        shown = "\n".join(list(diff)[:30])
        pytest.fail(
            f"docs/configuration.md is out of date with src/ml_playground/config/schema.py; "
            f"regenerate it with `{REGENERATE}` "
            f"(python -m ml_playground.config.reference > docs/configuration.md)\n{shown}",
            pytrace=False,
        )


def test_every_key_of_every_section_has_a_row() -> None:
    text = render_reference()
    for name, field in ExperimentConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            assert f"## [{name}]\n" in text
            for key in section.model_fields:
                assert f"| `{name}.{key}` |" in text
        else:
            assert f"| `{name}` |" in text


class ToySection(Section):
    """A section's docstring
    becomes its introduction."""

    mode: Literal["fast", "slow"] = Field("fast", description="How | to go.")
    limit: int | None = Field(None, ge=2, lt=10, description="See <dir>/x and `<code>`.")
    tags: list[str] = Field(default_factory=list, description="Any *words*.")
    ratio: float = Field(0.5, gt=0.0, le=1.0)


class ToyRoot(Section):
    name: str = Field(..., pattern=r"^\w+$", min_length=1, description="Required name.")
    toy: ToySection = ToySection()

    @model_validator(mode="after")
    def _documented_rule(self) -> ToyRoot:
        """A documented cross-field rule
        is listed."""
        return self

    @model_validator(mode="after")
    def _undocumented_rule(self) -> ToyRoot:
        return self


def test_types_defaults_bounds_and_descriptions_are_rendered() -> None:
    text = render_reference(ToyRoot)
    assert "| `name` | string, non-empty, matching `^\\w+$` | required | Required name. |" in text
    assert "## [toy]\n\nA section's docstring becomes its introduction.\n" in text
    assert '| `toy.mode` | one of `fast`, `slow` | `"fast"` | How \\| to go. |' in text
    assert (
        "| `toy.limit` | integer (optional), ≥ 2, < 10 | unset | See \\<dir>/x and `<code>`. |"
        in text
    )
    assert "| `toy.tags` | array of string | `[]` | Any \\*words\\*. |" in text
    assert "| `toy.ratio` | float, > 0.0, ≤ 1.0 | `0.5` |  |" in text
    assert text.endswith("## Rules across sections\n\n- A documented cross-field rule is listed.\n")
    assert text.count("\n- ") == 1
    assert ToyRoot(name="x").toy.ratio == 0.5  # the toy schema itself is valid
