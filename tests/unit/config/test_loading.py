from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config.loading import (
    check_keys,
    config_from_toml,
    config_to_toml,
    deep_merge,
    list_presets,
    parse_override,
    resolve_config,
)
from ml_playground.errors import ConfigError


def test_presets_ship_with_the_package() -> None:
    presets = list_presets()
    assert "shakespeare_char" in presets
    assert presets["shakespeare_char"]


def test_preset_values_override_defaults() -> None:
    config = resolve_config("shakespeare_char")
    assert config.name == "shakespeare_char"
    assert config.data.corpus == "shakespeare"
    assert config.model.n_layer == 4
    assert config.train.max_iters == 2000


def test_layers_apply_in_order_preset_file_overrides(tmp_path: Path) -> None:
    layer = tmp_path / "layer.toml"
    layer.write_text("[train]\nmax_iters = 7\nbatch_size = 3\n", encoding="utf-8")
    config = resolve_config("shakespeare_char", ["train.max_iters=9"], layer)
    assert config.train.batch_size == 3  # from the file
    assert config.train.max_iters == 9  # the override beats the file
    assert config.model.n_embd == 128  # untouched preset value


def test_cli_flags_win_over_overrides() -> None:
    config = resolve_config(
        "shakespeare_char", ["sample.temperature=0.5"], flags={"sample": {"temperature": 0.0}}
    )
    assert config.sample.temperature == 0.0


def test_experiment_can_be_a_toml_path_named_after_its_stem(tiny_experiment: Path) -> None:
    config = resolve_config(str(tiny_experiment))
    assert config.name == "tiny"
    assert config.data.corpus == "file"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("train.max_iters=100", {"train": {"max_iters": 100}}),
        ("train.learning_rate=3e-4", {"train": {"learning_rate": 3e-4}}),
        ("model.bias=true", {"model": {"bias": True}}),
        ('sample.prompt="ROMEO:"', {"sample": {"prompt": "ROMEO:"}}),
        ("data.path=/my/texts", {"data": {"path": "/my/texts"}}),
        ("sample.top_k=[1, 2]", {"sample": {"top_k": [1, 2]}}),
    ],
)
def test_parse_override_reads_toml_literals_and_bare_strings(item: str, expected: dict) -> None:
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["train.max_iters", "=3", "train..x=1", ".x=1"])
def test_malformed_override_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError, match=r"KEY=VALUE"):
        parse_override(item)


def test_unknown_key_names_it_lists_allowed_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("shakespeare_char", ["train.max_iter=5"])
    message = str(info.value)
    assert "'train.max_iter'" in message
    assert "did you mean 'train.max_iters'" in message
    assert "learning_rate" in message
    assert "[train]" in message


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        resolve_config("shakespeare_char", ["trian.max_iters=5"])


def test_unknown_key_in_config_file_is_rejected(tmp_path: Path) -> None:
    layer = tmp_path / "bad.toml"
    layer.write_text("[model]\nn_layers = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'model.n_layers'.*did you mean 'model.n_layer'"):
        resolve_config("shakespeare_char", config_file=layer)


def test_setting_a_section_to_a_scalar_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'train' is a section"):
        resolve_config("shakespeare_char", ["train=3"])


def test_wrong_type_names_the_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"train.max_iters"):
        resolve_config("shakespeare_char", ['train.max_iters="many"'])


def test_cross_field_rule_has_an_actionable_message() -> None:
    with pytest.raises(ConfigError, match=r"divisible by model.n_head"):
        resolve_config("shakespeare_char", ["model.n_embd=130"])
    with pytest.raises(ConfigError, match=r"min_lr.*above"):
        resolve_config("shakespeare_char", ["train.min_lr=1.0"])
    with pytest.raises(ConfigError, match=r"needs data.path"):
        resolve_config("shakespeare_char", ["data.corpus='dir'"])


def test_unknown_experiment_suggests_closest_preset() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'shakespeare_char'"):
        resolve_config("shakespeare_chr")


def test_invalid_toml_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.toml is not valid TOML"):
        resolve_config(str(broken))


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found"):
        resolve_config("shakespeare_char", config_file=tmp_path / "nope.toml")


def test_toml_round_trip_preserves_the_config() -> None:
    config = resolve_config("shakespeare_char", ['sample.prompt="A \\"quoted\\" line\\n"'])
    assert config_from_toml(config_to_toml(config)) == config


def test_deep_merge_merges_tables_and_replaces_scalars() -> None:
    merged = deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "b": {"z": 1}})
    assert merged == {"a": {"x": 1, "y": 3}, "b": {"z": 1}}


def test_check_keys_accepts_every_schema_key() -> None:
    config = resolve_config("shakespeare_char")
    check_keys(config.model_dump())  # must not raise
