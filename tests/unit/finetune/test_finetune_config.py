"""The [hf] and [lora] sections, their cross-field rules, and the fine-tuning presets."""

from __future__ import annotations

import pytest

from ml_playground.config.loading import config_from_toml, config_to_toml, resolve_config
from ml_playground.errors import ConfigError

DATA = ["data.path='/data/corpus.txt'"]


def test_hf_model_brings_its_own_tokenizer() -> None:
    config = resolve_config("tiny_hf_lora", [*DATA, "hf.model='/models/tiny'"])
    assert (config.data.tokenizer, config.data.tokenizer_name) == ("hf", "/models/tiny")
    assert config_from_toml(config_to_toml(config)) == config


def test_without_hf_model_nothing_changes() -> None:
    config = resolve_config("textdir_char", ["data.path='/data'"])
    assert config.hf.model is None
    assert config.data.tokenizer == "char"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.tokenizer='char'"], r"drop data\.tokenizer='char'"),
        (["train.ema_decay=0.999"], r"unset train\.ema_decay"),
        (["hf.load_in_4bit=true", "train.device='cpu'"], r"set hf\.load_in_4bit=false"),
        (["lora.target_modules=['']"], r"lora\.target_modules must list module names"),
        (["lora.r=0"], r"lora\.r"),
        (["lora.bias='some'"], r"lora\.bias"),
        (["hf.modle='x'"], r"did you mean 'hf\.model'"),
    ],
)
def test_fine_tune_settings_are_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny_hf_lora", [*DATA, "hf.model='/models/tiny'", *overrides])


def test_real_presets_name_their_models_and_need_only_the_corpus() -> None:
    speakger = resolve_config("speakger_gemma3_lora", ["data.path='/data/speakger.jsonl'"])
    assert speakger.hf.model == "google/gemma-3-270m-it"
    assert speakger.data.corpus == "jsonl"
    assert speakger.data.tokenizer_name == "google/gemma-3-270m-it"
    bundestag = resolve_config("bundestag_qwen_lora", ["data.path='/data/protokolle'"])
    assert bundestag.hf.model == "Qwen/Qwen2.5-1.5B"
    assert bundestag.data.corpus == "dir"
    assert bundestag.lora.mlp
    for preset in ("speakger_gemma3_lora", "bundestag_qwen_lora"):
        with pytest.raises(ConfigError, match=r"needs data\.path"):
            resolve_config(preset)
