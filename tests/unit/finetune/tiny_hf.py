"""Tiny random-init Hugging Face models with their tokenizers, saved to a folder (no network).

`save_tiny_model(folder, "llama")` writes what `save_pretrained` writes for a real model:
config.json, model.safetensors, tokenizer.json, tokenizer_config.json (and chat_template.jinja
when asked). The Llama's tokenizer puts <s> (BOS) before every text, as Llama and Gemma do; the
GPT-2's has only <|endoftext|>, as GPT-2 and Qwen do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from conftest import WORDS
from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig

FAST = [
    "model.block_size=16",
    "train.batch_size=2",
    "train.max_iters=4",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.log_interval=2",
    "train.checkpoint_interval=2",
]
"""Overrides for a few-second fine-tune of a tiny model."""
CHAT_TEMPLATE = (
    "{% for m in messages %}<|turn|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}"
)


def sample_text(lines: int = 200, seed: int = 0) -> str:
    """Play-like lines (`KING.\\nGood night my lord!`), deterministic."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(lines):
        speaker = ["KING", "QUEEN", "LORD"][int(torch.randint(3, (1,), generator=rng))]
        count = int(torch.randint(3, 9, (1,), generator=rng))
        words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (count,), generator=rng)]
        out.append(f"{speaker}.\n{' '.join(words).capitalize()}.\n")
    return "\n".join(out)


def build_tokenizer(arch: Literal["llama", "gpt2"], chat: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `sample_text`, with the special tokens of the architecture."""
    specials = ["<unk>", "<s>", "</s>"] if arch == "llama" else ["<|endoftext|>"]
    if chat:
        specials += ["<|turn|>", "<|end|>"]
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([sample_text()], trainer=trainer)
    if arch == "llama":  # BOS before every text, like Llama / Gemma
        bos = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(
    folder: Path, arch: Literal["llama", "gpt2"] = "llama", *, chat: bool = False, seed: int = 0
) -> Path:
    """A 2-layer, 32-wide random model + tokenizer in `folder` (save_pretrained layout)."""
    tokenizer = build_tokenizer(arch, chat)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    model: torch.nn.Module
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                tie_word_embeddings=False,
            )
        )
    else:
        eos = tokenizer.eos_token_id
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=128,
                bos_token_id=eos,
                eos_token_id=eos,
            )
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


_BUILT: dict[tuple[int, str], Path] = {}


def tiny_model(
    factory: pytest.TempPathFactory, arch: Literal["llama", "gpt2"] = "llama", chat: bool = False
) -> Path:
    """`save_tiny_model` once per test session (and architecture), in pytest's temp folder."""
    key = (id(factory), f"{arch}-chat" if chat else arch)
    if key not in _BUILT:
        _BUILT[key] = save_tiny_model(factory.mktemp(key[1]), arch, chat=chat)
    return _BUILT[key]


def corpus_file(factory: pytest.TempPathFactory) -> Path:
    """`sample_text()` in a file, once per session."""
    key = (id(factory), "corpus")
    if key not in _BUILT:
        path = factory.mktemp("corpus") / "corpus.txt"
        path.write_text(sample_text(), "utf-8")
        _BUILT[key] = path
    return _BUILT[key]


def finetune_config(model_dir: Path, corpus: Path, *overrides: str) -> ExperimentConfig:
    """The `tiny_hf_lora` preset on `model_dir` and `corpus`, plus `overrides`."""
    base = [f"hf.model='{model_dir.as_posix()}'", f"data.path='{corpus.as_posix()}'"]
    return resolve_config("tiny_hf_lora", [*base, *overrides])
