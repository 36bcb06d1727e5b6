"""Which checkpoint export picks, and which models it refuses as not GPT-2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from export_fixtures import make_checkpoint, randomize
from torch import nn

from ml_playground.config.schema import ModelConfig
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.export.common import ExportError
from ml_playground.export.source import (
    check_gpt2_compatible,
    gpt2_tensors,
    load_source,
    resolve_source,
)
from ml_playground.model.gpt import GPT


def tiny_config(**options: object) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=16, vocab_size=50, **options)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("pos_embedding", "rope"),
        ("qk_norm", True),
        ("mlp_activation", "relu2"),
        ("tie_embeddings", False),
    ],
)
def test_options_gpt2_cannot_express_are_refused_by_name(option: str, value: object) -> None:
    if option not in ModelConfig.model_fields:
        pytest.skip(f"this version of the model has no {option} option")
    model = GPT(tiny_config(**{option: value}))
    with pytest.raises(ExportError, match=rf"model\.{option}="):
        check_gpt2_compatible(model)


def test_an_unknown_new_option_is_refused_when_not_at_its_default() -> None:
    class FutureConfig(ModelConfig):
        sliding_window: int = 0

    check_gpt2_compatible(GPT(FutureConfig(**tiny_config().model_dump())))
    fancy = FutureConfig(**tiny_config().model_dump(), sliding_window=8)
    with pytest.raises(ExportError, match=r"model\.sliding_window=8"):
        check_gpt2_compatible(GPT(fancy))


def test_extra_tensors_are_refused_by_name() -> None:
    model = GPT(tiny_config())
    model.h[0].attn.register_parameter("q_gain", nn.Parameter(torch.ones(64)))
    with pytest.raises(ExportError, match=r"h\.0\.attn\.q_gain"):
        check_gpt2_compatible(model)


def test_an_untied_head_is_refused() -> None:
    model = GPT(tiny_config())
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())
    with pytest.raises(ExportError, match="not tied"):
        check_gpt2_compatible(model)


@pytest.mark.parametrize("bias", [True, False])
def test_gpt2_tensors_hold_every_bias_zeros_where_the_model_has_none(bias: bool) -> None:
    model = randomize(GPT(tiny_config(bias=bias)))
    tensors = gpt2_tensors(model)
    assert len(tensors) == 2 + 2 * 6 * 2 + 2  # wte, wpe; 6 modules x (w, b) x 2 layers; ln_f
    assert torch.equal(tensors["h.1.mlp.c_fc.weight"], model.h[1].mlp.c_fc.weight)
    c_attn_bias = model.h[0].attn.c_attn.bias
    expected = c_attn_bias if c_attn_bias is not None else torch.zeros(3 * 64)
    assert torch.equal(tensors["h.0.attn.c_attn.bias"], expected)
    assert tensors["ln_f.bias"].abs().sum() > 0 if bias else tensors["ln_f.bias"].abs().sum() == 0


def test_padding_rows_of_the_embedding_are_dropped() -> None:
    if "vocab_multiple" not in ModelConfig.model_fields:
        pytest.skip("this version of the model has no vocab_multiple option")
    model = GPT(tiny_config(vocab_multiple=64))
    check_gpt2_compatible(model)
    assert model.wte.weight.shape[0] == 64
    assert gpt2_tensors(model)["wte.weight"].shape == (50, 64)


def test_best_falls_back_to_last_with_a_notice(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "tiny" / "main" / "checkpoints"
    make_checkpoint(run / "last")
    # The checkpoint's config (name "tiny") is the experiment; its TOML is a valid preset file.
    toml = tmp_path / "tiny.toml"
    shutil.copy(run / "last" / "config.toml", toml)
    notices: list[str] = []
    source = resolve_source(str(toml), None, None, tmp_path, {"sample": {}}, notices.append)
    assert source.checkpoint == run / "last"
    assert notices == ["notice: no `best` checkpoint yet; exporting `last`"]
    assert load_source(source).model.vocab_size > 0


def test_missing_checkpoint_says_to_train_first(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="ml-playground train tiny"):
        resolve_source(str(checkpoint / "config.toml"), None, None, tmp_path, {"sample": {}})


def test_a_checkpoint_directory_is_its_own_source(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    flags = {"sample": {"weights": "model"}}
    source = resolve_source(str(checkpoint), ["sample.temperature=0"], None, tmp_path, flags)
    assert source.checkpoint == checkpoint
    assert source.config.sample.temperature == 0
    with pytest.raises(ConfigError, match="drop --checkpoint"):
        resolve_source(str(checkpoint), None, None, tmp_path, {"sample": {"checkpoint": "last"}})


def test_ema_weights_that_are_not_there_are_a_user_error(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    source = resolve_source(str(checkpoint), None, None, tmp_path, {"sample": {"weights": "ema"}})
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_source(source)
