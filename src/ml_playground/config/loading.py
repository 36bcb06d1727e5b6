"""Resolve an experiment config: defaults → preset TOML → `--config FILE` → KEY=VALUE overrides.

Layers are plain nested dicts merged key by key (later wins), then validated once. Before pydantic
sees them, every key is checked against the schema so that a typo is reported as the key a person
wrote, with the keys that section allows and the closest match.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from ml_playground.config.schema import ExperimentConfig
from ml_playground.errors import ConfigError

PRESET_PACKAGE = "ml_playground.config.presets"

ConfigDict = dict[str, Any]


def list_presets() -> dict[str, str]:
    """Preset name → its one-line description, for every TOML shipped in the package."""
    presets: dict[str, str] = {}
    for entry in sorted(resources.files(PRESET_PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            presets[entry.name.removesuffix(".toml")] = str(data.get("description", ""))
    return presets


def read_toml(path: Path) -> ConfigDict:
    """Read a TOML file, turning syntax errors into a message that names the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def load_experiment_layer(experiment: str) -> ConfigDict:
    """The preset layer: a shipped preset by name, or a TOML file by path.

    A file's experiment name defaults to its stem, so `my_run.toml` writes to `runs/my_run/`.
    """
    path = Path(experiment)
    if experiment.endswith(".toml") or path.is_file():
        layer = read_toml(path)
        layer.setdefault("name", path.stem)
        return layer
    presets = list_presets()
    if experiment not in presets:
        hint = _closest(experiment, presets)
        raise ConfigError(
            f"unknown experiment '{experiment}'{hint}; presets: {', '.join(presets)} "
            f"(or pass a path to a .toml file)"
        )
    text = resources.files(PRESET_PACKAGE).joinpath(f"{experiment}.toml").read_text("utf-8")
    layer = tomllib.loads(text)
    layer.setdefault("name", experiment)
    return layer


def parse_override(item: str) -> ConfigDict:
    """`train.max_iters=100` → {"train": {"max_iters": 100}}.

    The value is read as a TOML literal (numbers, booleans, quoted strings, arrays); anything that
    is not valid TOML is taken as a bare string, so `data.path=/my/texts` needs no quoting.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override '{item}' is not KEY=VALUE in dotted form (e.g. train.max_iters=100)"
        )
    try:
        value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    nested: ConfigDict = {}
    cursor = nested
    *parents, leaf = key.split(".")
    for part in parents:
        cursor = cursor.setdefault(part, {})
    cursor[leaf] = value
    return nested


def deep_merge(base: ConfigDict, update: ConfigDict) -> ConfigDict:
    """Merge `update` into a copy of `base`; nested tables merge, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_keys(
    layer: ConfigDict, model: type[BaseModel] = ExperimentConfig, prefix: str = ""
) -> None:
    """Raise on the first key the schema does not have, naming it, the allowed keys and a guess."""
    fields = model.model_fields
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            allowed = sorted(fields)
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ConfigError(
                f"unknown config key '{dotted}'{_closest(key, allowed, prefix)}; "
                f"allowed keys in {where}: {', '.join(allowed)}"
            )
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' is a section; set its keys, e.g. {dotted}.<key>=...")
            check_keys(value, annotation, f"{dotted}.")


def resolve_config(
    experiment: str,
    overrides: list[str] | None = None,
    config_file: Path | None = None,
    flags: ConfigDict | None = None,
) -> ExperimentConfig:
    """Build the validated config from all layers, later layers winning.

    `flags` is a last, already-structured layer for values that arrive through dedicated CLI
    options (e.g. `sample --temperature 0`), so they need no round trip through TOML text.
    """
    layers = [load_experiment_layer(experiment)]
    if config_file is not None:
        layers.append(read_toml(config_file))
    layers.extend(parse_override(item) for item in overrides or [])
    if flags:
        layers.append(flags)
    merged: ConfigDict = {}
    for layer in layers:
        check_keys(layer)
        merged = deep_merge(merged, layer)
    return validate_config(merged)


def validate_config(data: ConfigDict) -> ExperimentConfig:
    """Validate a merged dict, reporting every problem as `dotted.key: message`."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{location}: {message}" if location else message)
        raise ConfigError("invalid config: " + "; ".join(problems)) from exc


def config_to_toml(config: ExperimentConfig) -> str:
    """The resolved config as TOML (None values are left out: TOML has no null)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def config_from_toml(text: str) -> ExperimentConfig:
    """Inverse of `config_to_toml`, used to read the config saved next to a checkpoint."""
    return validate_config(tomllib.loads(text))


def _closest(key: str, options: Iterable[str], prefix: str = "") -> str:
    matches = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{matches[0]}'?)" if matches else ""
