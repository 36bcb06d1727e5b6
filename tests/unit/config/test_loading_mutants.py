"""Tests that pin down `config/loading.py` where mutation testing found it under-specified.

Each test kills mutants that survived `make mutation` (see docs/testing.md): the exact wording
of the errors a user reads, which layer a path or a name goes to, values with `=` in them,
and config files read as UTF-8 whatever the machine's locale.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from conftest import ascii_locale
from ml_playground.config import loading
from ml_playground.config.loading import (
    check_keys,
    list_presets,
    load_experiment_layer,
    parse_override,
    read_toml,
    resolve_config,
)
from ml_playground.config.schema import ExperimentConfig, TrainConfig
from ml_playground.errors import ConfigError


def test_list_presets_returns_each_presets_own_description() -> None:
    presets = list_presets()
    for name, description in presets.items():
        text = resources.files(loading.PRESET_PACKAGE).joinpath(f"{name}.toml").read_text("utf-8")
        assert description == tomllib.loads(text)["description"]
    assert list(presets) == sorted(presets)


def test_a_preset_without_description_lists_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fake_presets"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "b_plain.toml").write_text("[train]\nmax_iters = 1\n", encoding="utf-8")
    (package / "a_described.toml").write_text('description = "one line"\n', encoding="utf-8")
    (package / "notes.txt").write_text("not a preset", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_presets", raising=False)  # not another test's copy
    monkeypatch.setattr(loading, "PRESET_PACKAGE", "fake_presets")
    assert list_presets() == {"a_described": "one line", "b_plain": ""}
    assert list(list_presets()) == ["a_described", "b_plain"]


def test_a_toml_file_without_the_toml_suffix_is_read_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_run.cfg"
    path.write_text("[train]\nmax_iters = 3\n", encoding="utf-8")
    layer = load_experiment_layer(str(path))
    assert layer == {"train": {"max_iters": 3}, "name": "my_run"}


def test_a_missing_toml_path_is_reported_as_a_missing_file_not_an_unknown_preset(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=r"^config file not found: .*nowhere\.toml$"):
        load_experiment_layer(str(missing))


def test_an_unknown_experiment_lists_the_presets_comma_separated() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_layer("no_such_preset_anywhere")
    message = str(info.value)
    assert message.startswith("unknown experiment 'no_such_preset_anywhere'; presets: ")
    assert f"presets: {', '.join(list_presets())} (or pass" in message


def test_a_preset_layer_is_named_after_the_preset() -> None:
    layer = load_experiment_layer("shakespeare_char")
    assert layer["name"] == "shakespeare_char"
    assert layer["data"]["corpus"] == "shakespeare"


def test_an_override_value_may_contain_equals_signs() -> None:
    assert parse_override('sample.prompt="a=b=c"') == {"sample": {"prompt": "a=b=c"}}
    assert parse_override("data.path=/x=y") == {"data": {"path": "/x=y"}}


def test_unknown_top_level_key_lists_the_top_level_keys_exactly() -> None:
    allowed = ", ".join(sorted(ExperimentConfig.model_fields))
    with pytest.raises(ConfigError) as info:
        check_keys({"zzzz": 1})
    assert str(info.value) == f"unknown config key 'zzzz'; allowed keys in the top level: {allowed}"


def test_unknown_section_key_names_the_section_in_brackets() -> None:
    with pytest.raises(ConfigError) as info:
        check_keys({"train": {"max_iter": 1}})
    allowed = ", ".join(sorted(TrainConfig.model_fields))
    assert str(info.value) == (
        "unknown config key 'train.max_iter' (did you mean 'train.max_iters'?); "
        f"allowed keys in [train]: {allowed}"
    )


def test_the_closest_match_is_the_only_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        check_keys({"model": {"n_layers": 2}})
    assert "(did you mean 'model.n_layer'?)" in str(info.value)
    assert str(info.value).count("did you mean") == 1


def test_a_validator_message_reaches_the_user_without_pydantics_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("shakespeare_char", ["model.n_embd=30", "model.n_head=4"])
    message = str(info.value)
    assert message.startswith("invalid config: model: model.n_embd=30 must be divisible")
    assert "Value error" not in message


def test_a_whole_config_rule_has_no_location_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(
            "shakespeare_char", ["hf.model=/some/model", "data.tokenizer=char", "train.device=cpu"]
        )
    assert str(info.value).startswith("invalid config: hf.model is set, so the text is tokenized")


def test_several_problems_are_joined_with_semicolons() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("shakespeare_char", ["train.batch_size=0", "model.n_layer=0"])
    message = str(info.value)
    assert message.startswith("invalid config: ")
    problems = message.removeprefix("invalid config: ").split("; ")
    assert sorted(p.split(":")[0] for p in problems) == ["model.n_layer", "train.batch_size"]


PROMPT = "Präsident Dr. Norbert Lammert: Ich eröffne die Sitzung."


def test_a_config_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "bundestag.toml"
    path.write_text(f'[sample]\nprompt = "{PROMPT}"\n', encoding="utf-8")
    with ascii_locale():
        assert read_toml(path) == {"sample": {"prompt": PROMPT}}


def test_a_preset_is_read_as_utf8_whatever_the_locale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "german_presets"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "rede.toml").write_text(f'[sample]\nprompt = "{PROMPT}"\n', encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "german_presets", raising=False)  # not another test's copy
    monkeypatch.setattr(loading, "PRESET_PACKAGE", "german_presets")
    with ascii_locale():
        assert load_experiment_layer("rede") == {"sample": {"prompt": PROMPT}, "name": "rede"}
