"""Regression: a chat template that refuses a prompt/response pair (its `raise_exception(...)`,
as in "Conversation roles must alternate" or "Unknown role") made `prepare` crash with a raw
`jinja2.exceptions.TemplateError` traceback (exit 1). It is a user error: a `DataError` naming
the template's reason, which the CLI turns into exit 2 and one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ml_playground.config.schema import DataConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.errors import DataError

pytest.importorskip("transformers", reason="chat templates need the `hf` extra")

TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'model'] %}"
    "{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}"
    "<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
)
"""A template that names the answering side 'model' (as Gemma's does) and refuses others."""


def tokenizer_folder(folder: Path) -> Path:
    """A byte-level BPE with an end-of-text token and TEMPLATE as its chat template."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["</s>", "<|turn|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["what say you, my lord? good night"] * 20, trainer=trainer)
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}), "utf-8")
    (folder / "chat_template.jinja").write_text(TEMPLATE, "utf-8")
    return folder


def test_a_chat_template_refusing_the_pairs_fails_prepare_with_a_data_error(
    tmp_path: Path,
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    lines = [{"q": f"what say you {i}?", "a": f"good night {i}"} for i in range(12)]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines), "utf-8")
    config = DataConfig(
        corpus="jsonl",
        path=str(pairs),
        prompt_field="q",
        response_field="a",
        tokenizer="hf",
        tokenizer_name=str(tokenizer_folder(tmp_path / "tokenizer")),
    )
    with pytest.raises(DataError) as info:
        prepare_dataset(config, tmp_path / "work", "pairs")
    assert str(info.value) == "the chat template cannot format this pair: Unknown role: assistant"
