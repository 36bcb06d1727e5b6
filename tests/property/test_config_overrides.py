from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_playground.config.loading import (
    config_from_toml,
    config_to_toml,
    parse_override,
    resolve_config,
)
from ml_playground.errors import ConfigError

PRESET = "shakespeare_char"
BASE = resolve_config(PRESET)

# Keys that any value of their strategy may take on top of the preset (no cross-field conflicts).
FIELDS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("train", "max_iters"): st.integers(0, 10**9),
    ("train", "batch_size"): st.integers(1, 4096),
    ("train", "seed"): st.integers(-(2**63), 2**63 - 1),
    ("train", "compile"): st.booleans(),
    ("model", "n_layer"): st.integers(1, 64),
    ("data", "val_fraction"): st.floats(0.0, 0.5, exclude_min=True, exclude_max=True),
    ("sample", "temperature"): st.floats(0.0, 100.0),
    ("sample", "prompt"): st.text(max_size=20),
}
KEYS = sorted(FIELDS)


def toml_literal(value: Any) -> str:
    """How a user would write `value` after `KEY=` (a TOML literal)."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").removesuffix("\n")


def override(section: str, field: str, value: Any) -> str:
    return f"{section}.{field}={toml_literal(value)}"


assignments = st.lists(
    st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), FIELDS[key])),
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**63 - 1))
def test_any_valid_max_iters_override_lands_in_the_config(max_iters: int) -> None:
    config = resolve_config(PRESET, [f"train.max_iters={max_iters}"])
    assert config.train.max_iters == max_iters
    # Nothing else moves.
    expected = BASE.model_dump()
    expected["train"]["max_iters"] = max_iters
    assert config.model_dump() == expected


@settings(max_examples=25, deadline=None)
@given(st.integers(max_value=-1))
def test_a_negative_max_iters_is_a_config_error_naming_the_key(max_iters: int) -> None:
    with pytest.raises(ConfigError, match=r"train\.max_iters"):
        resolve_config(PRESET, [f"train.max_iters={max_iters}"])


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), FIELDS[key])))
def test_parse_override_reads_the_value_as_a_toml_literal(
    item: tuple[tuple[str, str], Any],
) -> None:
    (section, field), value = item
    assert parse_override(override(section, field, value)) == {section: {field: value}}


@settings(max_examples=40, deadline=None)
@given(file_layer=assignments, overrides=assignments, flags=assignments)
def test_later_layers_win(
    file_layer: list[tuple[tuple[str, str], Any]],
    overrides: list[tuple[tuple[str, str], Any]],
    flags: list[tuple[tuple[str, str], Any]],
) -> None:
    """preset → --config FILE → KEY=VALUE overrides (in order) → CLI flags; the last one wins."""
    file_data: dict[str, dict[str, Any]] = {}
    for (section, field), value in file_layer:
        file_data.setdefault(section, {})[field] = value
    flag_data: dict[str, dict[str, Any]] = {}
    for (section, field), value in flags:
        flag_data.setdefault(section, {})[field] = value

    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "layer.toml"
        config_file.write_text(tomli_w.dumps(file_data), encoding="utf-8")
        config = resolve_config(
            PRESET,
            [override(section, field, value) for (section, field), value in overrides],
            config_file,
            flag_data or None,
        )

    expected = BASE.model_dump()
    for (section, field), value in [*file_layer, *overrides, *flags]:
        expected[section][field] = value
    assert config.model_dump() == expected


run_names = st.from_regex(r"\A[A-Za-z0-9._-]{1,12}\Z")
optional_settings = st.fixed_dictionaries(
    {},
    optional={
        "description": st.text(max_size=30),
        "data": st.fixed_dictionaries(
            {},
            optional={
                "path": st.text(min_size=1, max_size=20),
                "seed": st.integers(-(2**63), 2**63 - 1),
            },
        ),
        "model": st.fixed_dictionaries(
            {},
            optional={
                "n_layer": st.integers(1, 48),
                "dropout": st.floats(0.0, 1.0, exclude_max=True),
                "bias": st.booleans(),
                "vocab_size": st.integers(1, 2**20),
            },
        ),
        "train": st.fixed_dictionaries(
            {},
            optional={
                "run_name": run_names,
                "learning_rate": st.floats(1e-3, 1.0),
                "min_lr": st.floats(0.0, 1e-3),
                "lr_decay_iters": st.integers(100, 10**6),
                "grad_clip": st.floats(0.0, 10.0),
                "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
            },
        ),
        "sample": st.fixed_dictionaries(
            {},
            optional={
                "prompt": st.text(max_size=30),
                "temperature": st.floats(0.0, 5.0),
                "top_k": st.integers(1, 1000),
                "top_p": st.floats(0.0, 1.0, exclude_min=True),
                "checkpoint": st.text(min_size=1, max_size=20),
            },
        ),
    },
)


@settings(max_examples=60, deadline=None)
@given(optional_settings)
def test_config_to_toml_round_trips(layer: dict[str, Any]) -> None:
    config = resolve_config(PRESET, flags=layer)
    text = config_to_toml(config)
    assert config_from_toml(text) == config
    # And the TOML a person reads is stable: writing the reloaded config gives the same text.
    assert config_to_toml(config_from_toml(text)) == text
