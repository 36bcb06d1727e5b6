"""Config ids, pools from every supported source, and search-space expansion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from ml_playground.errors import ConfigError
from ml_playground.variants.config import Choice, Config, Grid, expand_space, load_configs


def test_config_id_is_sha256_of_canonical_json() -> None:
    data = {"b": 2, "a": {"y": [1, 2], "x": "é"}}
    canonical = '{"a":{"x":"é","y":[1,2]},"b":2}'
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert Config(data).config_id == expected
    assert Config({"a": {"x": "é", "y": [1, 2]}, "b": 2}).config_id == expected


def test_config_id_changes_with_any_value() -> None:
    assert Config({"lr": 1e-3}).config_id != Config({"lr": 3e-4}).config_id
    assert len(Config({"lr": 1e-3}).config_id) == 16


def test_user_given_id_wins_over_hash() -> None:
    assert Config({"lr": 1}, config_id="baseline").config_id == "baseline"
    from_key = Config({"config_id": "champion", "lr": 1})
    assert from_key.config_id == "champion"
    assert "config_id" not in from_key


def test_config_is_a_read_only_mapping() -> None:
    config = Config({"lr": 1})
    assert dict(config) == {"lr": 1}
    with pytest.raises(TypeError):
        config["lr"] = 2  # type: ignore[index]


def test_unserialisable_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="JSON"):
        Config({"fn": object()})


def test_grid_expands_to_cartesian_product_in_order() -> None:
    points = expand_space({"lr": Grid([1, 2]), "model": {"n_layer": Grid([4, 8])}, "x": 0})
    assert points == [
        {"lr": 1, "model": {"n_layer": 4}, "x": 0},
        {"lr": 1, "model": {"n_layer": 8}, "x": 0},
        {"lr": 2, "model": {"n_layer": 4}, "x": 0},
        {"lr": 2, "model": {"n_layer": 8}, "x": 0},
    ]


def test_choice_draws_a_seeded_subset() -> None:
    first = Choice(list(range(100)), n=5, seed=7).expand()
    assert first == Choice(list(range(100)), n=5, seed=7).expand()
    assert first != Choice(list(range(100)), n=5, seed=8).expand()
    assert len(set(first)) == 5
    with pytest.raises(ConfigError, match="between 1 and 3"):
        Choice([1, 2, 3], n=4)


def test_pydantic_search_space_expands() -> None:
    class Space(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        lr: float | Grid = Grid([1e-3, 3e-4])
        layers: int | Choice = Choice([2, 4, 6, 8], n=2, seed=0)
        dropout: float = 0.1

    configs = load_configs(Space)
    assert len(configs) == 4
    assert {c["lr"] for c in configs} == {1e-3, 3e-4}
    assert all(c["dropout"] == 0.1 for c in configs)
    assert len({c.config_id for c in configs}) == 4
    assert [c.config_id for c in load_configs(Space())] == [c.config_id for c in configs]


def test_list_of_dicts_and_configs(tmp_path: Path) -> None:
    configs = load_configs([{"a": 1}, Config({"a": 2}, config_id="two")])
    assert [c["a"] for c in configs] == [1, 2]
    assert configs[1].config_id == "two"


def test_toml_yaml_json_files_and_directory(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("lr = 0.001\n[model]\nn_layer = 2\n")
    (tmp_path / "b.yaml").write_text("lr: 0.01\n")
    (tmp_path / "c.json").write_text(json.dumps({"config_id": "named", "lr": 0.1}))
    configs = load_configs(tmp_path)
    assert [c.config_id for c in configs] == ["a", "b", "named"]
    assert configs[0]["model"] == {"n_layer": 2}
    pool = tmp_path / "pool.toml"
    pool.write_text("[[configs]]\nlr = 1\n[[configs]]\nlr = 2\n")
    assert [c["lr"] for c in load_configs(pool)] == [1, 2]


def test_unknown_inputs_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot make configs from int"):
        load_configs(42)
    with pytest.raises(ConfigError, match="cannot make configs from set"):
        load_configs({1, 2})
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"not configs: notes\.txt"):
        load_configs(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_configs(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_configs(bad)


def test_conflicting_ids_raise_and_duplicates_collapse() -> None:
    with pytest.raises(ConfigError, match="share the id 'x'"):
        load_configs([Config({"a": 1}, config_id="x"), Config({"a": 2}, config_id="x")])
    assert len(load_configs([{"a": 1}, {"a": 1}])) == 1
