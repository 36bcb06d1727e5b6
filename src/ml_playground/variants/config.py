"""Configs with stable ids, and pools of them from files, dicts or a search space.

A variant's identity must survive a restart, a re-run and another machine, so `config_id` is a
content hash — the first 16 hex digits of sha256 over canonical JSON (sorted keys, no spaces) —
unless the user names the config, in which case their name wins. Pools come from a TOML/YAML/JSON
file, a directory of them, a list of dicts, or a pydantic model whose fields hold `Grid` (every
value: a Cartesian product) or `Choice` (a seeded random subset of values). Anything else raises:
an input silently dropped would turn an A/B test into an A test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ml_playground.errors import ConfigError

ID_KEY = "config_id"
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def canonical_json(data: Mapping[str, Any]) -> str:
    """The one text form a config hashes from: sorted keys, no whitespace, UTF-8 kept."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except TypeError as exc:
        raise ConfigError(f"config values must be JSON-serialisable: {exc}") from None


def compute_config_id(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:16]


class Config(Mapping[str, Any]):
    """An immutable mapping of settings with a stable `config_id` (given, or a content hash)."""

    __slots__ = ("_data", "_id")

    def __init__(self, data: Mapping[str, Any], config_id: str | None = None) -> None:
        items = dict(data)
        given = items.pop(ID_KEY, None)
        if config_id is None and given is not None:
            config_id = str(given)
        if config_id is not None and not config_id.strip():
            raise ConfigError("config_id must not be empty")
        self._data = items
        self._id = config_id if config_id is not None else compute_config_id(items)

    @property
    def config_id(self) -> str:
        return self._id

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self._id == other._id and self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._id, canonical_json(self._data)))

    def __repr__(self) -> str:
        return f"Config({self._data!r}, config_id={self._id!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy (nested values are shared; configs are meant to be read)."""
        return dict(self._data)


@dataclass(frozen=True)
class Grid:
    """Every value, combined with every value of the other `Grid`s (Cartesian product)."""

    values: Sequence[Any]

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ConfigError("Grid needs at least one value")

    def expand(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Choice:
    """`n` distinct values drawn from `values` with a seeded RNG: a reproducible random search."""

    values: Sequence[Any]
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ConfigError("Choice needs at least one value")
        if not 1 <= self.n <= len(self.values):
            raise ConfigError(
                f"Choice(n={self.n}) must draw between 1 and {len(self.values)} values"
            )

    def expand(self) -> list[Any]:
        indices = random.Random(self.seed).sample(range(len(self.values)), self.n)
        return [self.values[i] for i in sorted(indices)]


def expand_space(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Expand every `Grid`/`Choice` (also inside nested dicts) into the product of their values.

    The order is deterministic: the first field varies slowest, as in `itertools.product`.
    """
    axes: list[tuple[tuple[str, ...], list[Any]]] = []

    def find(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, Grid | Choice):
                axes.append(((*path, key), value.expand()))
            elif isinstance(value, Mapping):
                find(value, (*path, key))

    find(space, ())
    results = []
    for combo in itertools.product(*(values for _, values in axes)):
        point = _deep_copy(space)
        for (path, _), value in zip(axes, combo, strict=True):
            node = point
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        results.append(point)
    return results


def _deep_copy(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in node.items()}


def _read_file(path: Path) -> list[dict[str, Any]]:
    """A file holds one config, or a pool under a top-level `configs` list."""
    text = path.read_text("utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from exc
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"{path}: unknown config file type '{suffix}'; use one of {CONFIG_SUFFIXES}"
            )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {exc}") from None
    except ValueError as exc:  # yaml.YAMLError derives from Exception; PyYAML's are ValueErrors
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if isinstance(data, Mapping) and set(data) == {"configs"}:
        data = data["configs"]
    if isinstance(data, Mapping):
        return [dict(data)]
    if isinstance(data, list) and all(isinstance(item, Mapping) for item in data):
        return [dict(item) for item in data]
    raise ConfigError(f"{path}: expected a table of settings or a list `configs` of tables")


def _from_path(path: Path) -> list[Config]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        others = [p.name for p in files if p.is_dir() or p.suffix.lower() not in CONFIG_SUFFIXES]
        if others:
            raise ConfigError(
                f"{path} holds files that are not configs: {', '.join(others)} "
                f"(only {', '.join(CONFIG_SUFFIXES)} files belong in a config directory)"
            )
        if not files:
            raise ConfigError(f"config directory {path} is empty")
        configs: list[Config] = []
        for file in files:
            pool = _read_file(file)
            # One config per file: the file's stem names it unless the file says otherwise.
            if len(pool) == 1 and ID_KEY not in pool[0]:
                configs.append(Config(pool[0], config_id=file.stem))
            else:
                configs.extend(_from_mapping(item) for item in pool)
        return configs
    if not path.exists():
        raise ConfigError(f"config source not found: {path}")
    return [_from_mapping(item) for item in _read_file(path)]


def _from_mapping(data: Mapping[str, Any]) -> Config:
    return Config(data)


def _from_model(model: BaseModel) -> list[Config]:
    space = {name: getattr(model, name) for name in type(model).model_fields}
    return [Config(point) for point in expand_space(space)]


def load_configs(source: Any) -> list[Config]:
    """Any supported source → a list of `Config`s with unique ids, in a stable order.

    Accepted: a `Config`; a mapping (expanded if it holds `Grid`/`Choice`); a path (file or
    directory, as `str` or `Path`); a pydantic model instance or class (defaults used); or a
    list/tuple of any of these. Everything else raises `ConfigError`.
    """
    configs: list[Config]
    if isinstance(source, Config):
        configs = [source]
    elif isinstance(source, Mapping):
        configs = [Config(point) for point in expand_space(source)]
    elif isinstance(source, str | Path):
        configs = _from_path(Path(source))
    elif isinstance(source, BaseModel):
        configs = _from_model(source)
    elif isinstance(source, type) and issubclass(source, BaseModel):
        configs = _from_model(source())
    elif isinstance(source, list | tuple):
        configs = [config for item in source for config in load_configs(item)]
    else:
        raise ConfigError(
            f"cannot make configs from {type(source).__name__}; pass a Config, a dict, a list "
            f"of dicts, a TOML/YAML/JSON file or directory, or a pydantic model"
        )
    seen: dict[str, Config] = {}
    for config in configs:
        if config.config_id in seen and seen[config.config_id] != config:
            raise ConfigError(f"two different configs share the id '{config.config_id}'")
        seen.setdefault(config.config_id, config)
    if not seen:
        raise ConfigError("the config pool is empty")
    return list(seen.values())
