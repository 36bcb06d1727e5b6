"""`hf.model` resolution: local folders as they are; Hub ids offline fail fast, naming the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="fine-tuning tests need the `hf` extra")

from tiny_hf import corpus_file, tiny_model

from ml_playground.config.schema import HFConfig
from ml_playground.errors import MLPlaygroundError
from ml_playground.finetune.hub import hub_offline, resolve_model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_file(tmp_path_factory)


def test_a_local_folder_is_used_as_it_is(llama_dir: Path) -> None:
    assert resolve_model_dir(HFConfig(model=str(llama_dir))) == llama_dir


def test_a_folder_without_config_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MLPlaygroundError, match=r"has no config\.json"):
        resolve_model_dir(HFConfig(model=str(tmp_path)))


def test_a_missing_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(MLPlaygroundError, match="no such directory"):
        resolve_model_dir(HFConfig(model=str(tmp_path / "nope")))
    with pytest.raises(MLPlaygroundError, match="no such directory"):
        resolve_model_dir(HFConfig(model="./models/gemma"))


def test_offline_hub_id_fails_at_once_naming_a_local_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    assert hub_offline()
    started = time.perf_counter()
    with pytest.raises(MLPlaygroundError) as info:
        resolve_model_dir(HFConfig(model="example-org/not-a-cached-model"))
    assert time.perf_counter() - started < 5  # no network attempt, no timeout
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert "hf.model=/path/to/model" in message


def test_offline_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert hub_offline()


def test_a_hub_model_is_tokenized_from_its_resolved_snapshot(
    tmp_path: Path, llama_dir: Path, text_file: Path
) -> None:
    """The exact revision downloaded (and no second trip to the Hub for the tokenizer)."""
    from ml_playground.config.loading import resolve_config
    from ml_playground.finetune.run import with_local_model

    data = f"data.path='{text_file.as_posix()}'"
    hub = resolve_config("tiny_hf_lora", ["hf.model='example-org/tiny'", data])
    assert hub.data.tokenizer_name == "example-org/tiny"
    assert with_local_model(hub, tmp_path).data.tokenizer_name == str(tmp_path)
    assert with_local_model(hub, tmp_path).hf.model == "example-org/tiny"
    local = resolve_config("tiny_hf_lora", [f"hf.model='{llama_dir.as_posix()}'", data])
    assert with_local_model(local, llama_dir) == local
