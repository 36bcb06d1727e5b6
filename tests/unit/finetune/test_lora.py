"""LoRA via PEFT: default targets per architecture, frozen base, identity at initialisation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="fine-tuning tests need the `hf` extra")

import torch
from tiny_hf import corpus_file, finetune_config, tiny_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from ml_playground.config.schema import ExperimentConfig, LoRAConfig
from ml_playground.errors import ConfigError
from ml_playground.finetune.lora import add_lora, lora_config, target_modules


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "gpt2")


@pytest.fixture
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ExperimentConfig]:
    """`tiny_config(model_dir, "train.max_iters=4", ...)`: tiny_hf_lora on the test corpus."""
    corpus = corpus_file(tmp_path_factory)
    return lambda model_dir, *overrides: finetune_config(model_dir, corpus, *overrides)


def load(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


@pytest.mark.parametrize(
    ("model_type", "mlp", "expected"),
    [
        ("llama", False, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        (
            "qwen2",
            True,
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        ("gemma3_text", False, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("mistral", False, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("gpt2", False, ["c_attn", "c_proj"]),
        ("gpt2", True, ["c_attn", "c_proj", "c_fc"]),
    ],
)
def test_default_targets_per_architecture(model_type: str, mlp: bool, expected: list[str]) -> None:
    assert target_modules(LoRAConfig(mlp=mlp), model_type) == expected


def test_explicit_targets_win_and_unknown_architectures_need_them() -> None:
    assert target_modules(LoRAConfig(target_modules=["q_proj"]), "llama") == ["q_proj"]
    with pytest.raises(ConfigError, match=r"set|name its projection layers"):
        target_modules(LoRAConfig(), "no_such_architecture")


def test_targets_the_model_lacks_are_named(llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"\['c_attn'\]"):
        lora_config(LoRAConfig(target_modules=["c_attn"]), load(llama_dir))


def test_gpt2_conv1d_layers_are_adapted_with_fan_in_fan_out(
    gpt2_dir: Path, llama_dir: Path
) -> None:
    """GPT-2 stores Conv1D weights transposed; PEFT must know, or it warns and guesses."""
    assert lora_config(LoRAConfig(), load(gpt2_dir)).fan_in_fan_out
    assert not lora_config(LoRAConfig(), load(llama_dir)).fan_in_fan_out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_adapters_train_and_start_as_identity(
    arch: str,
    llama_dir: Path,
    gpt2_dir: Path,
    tiny_config: Callable[..., ExperimentConfig],
    tmp_path: Path,
) -> None:
    folder = llama_dir if arch == "llama" else gpt2_dir
    config = tiny_config(folder, "lora.mlp=true")
    base = load(folder)
    tokens = torch.tensor([[20, 31, 42, 53]])
    with torch.no_grad():
        before = base(input_ids=tokens).logits
    torch.manual_seed(0)
    model = add_lora(base, config)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens).logits, before)  # B = 0 at init
    model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(config.hf.model)
    assert saved["r"] == config.lora.r
