"""generate_text / generate_batch / stream_batch on a real (tiny, untrained) checkpoint."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ml_playground.config.loading import config_to_toml
from ml_playground.config.schema import ExperimentConfig, ModelConfig, SampleConfig
from ml_playground.data.tokenizers import CharTokenizer, HuggingFaceTokenizer
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate import service
from ml_playground.generate.service import (
    GenerationSettings,
    LoadedModel,
    encode_prompt,
    generate_batch,
    generate_text,
    load_for_inference,
    sample_texts,
    stream_batch,
)
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import save_checkpoint

CHARS = sorted(set("abcdefgh \n"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root: Path = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    model_config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=len(CHARS))
    model = GPT(model_config)
    with torch.no_grad():  # sharper logits: greedy far from ties, sampling varied
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    CharTokenizer(CHARS).save(root / "tok")
    path = save_checkpoint(
        root / "best",
        model=model,
        optimizer=None,
        state={"iter": 1, "best_val_loss": None},
        config_toml=config_to_toml(ExperimentConfig(name="t", model=model_config)),
        tokenizer_dir=root / "tok",
    )
    return load_for_inference(path, "cpu")


GREEDY = GenerationSettings(max_new_tokens=40, temperature=0.0)


def test_greedy_text_matches_model_generate_past_block_size(loaded: LoadedModel) -> None:
    result = generate_text(loaded, "abc", GREEDY)
    ids = loaded.tokenizer.encode("abc")
    # The default window shift differs from nanoGPT's crop only after block_size tokens.
    reference = loaded.model.generate(torch.tensor([ids]), 16 - len(ids), temperature=0.0)
    expected = loaded.tokenizer.decode(reference[0, len(ids) :].tolist())
    assert result.text.startswith(expected)
    assert len(result.text) == 40
    assert (result.prompt_tokens, result.completion_tokens) == (3, 40)
    assert result.finish_reason == "length"


def test_streamed_deltas_concatenate_to_the_text(loaded: LoadedModel) -> None:
    deltas: list[str] = []
    result = generate_text(loaded, "ab", GREEDY, on_text=deltas.append)
    assert "".join(deltas) == result.text


def test_stop_sequence_cuts_the_text_and_streaming_never_shows_it(loaded: LoadedModel) -> None:
    full = generate_text(loaded, "ab", GREEDY).text
    stop = full[5:7]
    deltas: list[str] = []
    result = generate_text(
        loaded,
        "ab",
        replace(GREEDY, stop=(stop,)),
        on_text=deltas.append,
    )
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason == "stop"
    assert "".join(deltas) == result.text
    assert result.completion_tokens == full.index(stop) + len(stop)


def test_batch_rows_equal_single_prompts_and_finish_independently(loaded: LoadedModel) -> None:
    prompts = ["a", "hgfedcba abc", "cab"]
    single = [generate_text(loaded, p, GREEDY).text for p in prompts]
    stop = single[1][2:4]
    settings = GenerationSettings(max_new_tokens=40, temperature=0.0, stop=(stop,))
    batch = generate_batch(loaded, prompts, settings)
    for text, result in zip(single, batch, strict=True):
        if stop in text:
            assert result.text == text[: text.index(stop)]
            assert result.finish_reason == "stop"
        else:
            assert result.text == text
            assert result.finish_reason == "length"
    assert batch[1].finish_reason == "stop"


def test_stream_batch_events_end_with_one_finish_per_prompt(loaded: LoadedModel) -> None:
    settings = GenerationSettings(max_new_tokens=12, temperature=0.9, seed=3)
    events = list(stream_batch(loaded, ["a", "bb"], settings))
    finals = [e for e in events if e.finish_reason is not None]
    assert sorted(e.index for e in finals) == [0, 1]
    results = generate_batch(loaded, ["a", "bb"], settings)
    for index in (0, 1):
        streamed = "".join(e.text for e in events if e.index == index)
        assert streamed == results[index].text  # same seed, same text


def test_seeded_sampling_is_deterministic(loaded: LoadedModel) -> None:
    settings = GenerationSettings(max_new_tokens=30, temperature=1.0, top_k=5, seed=11)
    first = generate_text(loaded, "abc", settings).text
    torch.manual_seed(99)
    assert generate_text(loaded, "abc", settings).text == first
    other = GenerationSettings(max_new_tokens=30, temperature=1.0, top_k=5, seed=12)
    assert generate_text(loaded, "abc", other).text != first


def test_sample_texts_uses_the_sample_section(loaded: LoadedModel) -> None:
    config = SampleConfig(prompt="ab", max_new_tokens=20, temperature=0.0, num_samples=2)
    texts = sample_texts(loaded, config)
    assert texts[0] == texts[1] == generate_text(loaded, "ab", GREEDY).text[:20]
    stopped = sample_texts(loaded, config.model_copy(update={"stop": [texts[0][3:5]]}))
    assert stopped[0] == texts[0][: texts[0].index(texts[0][3:5])]


def test_empty_prompt_is_a_user_error(loaded: LoadedModel) -> None:
    with pytest.raises(MLPlaygroundError, match="prompt is empty"):
        generate_text(loaded, "", GREEDY)


# --- chat prompts (sample.chat / --chat) ---------------------------------------------------------
def _chat_tokenizer(folder: Path) -> HuggingFaceTokenizer:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
    from tiny_hf import save_tiny_model

    return HuggingFaceTokenizer.from_pretrained(str(save_tiny_model(folder, chat=True)))


def test_a_chat_prompt_is_a_user_turn_with_the_assistant_header(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    tokenizer = _chat_tokenizer(tmp_path / "chat")
    chat = replace(loaded, tokenizer=tokenizer)
    ids = encode_prompt(chat, "the king", chat=True)
    rendered = tokenizer.decode(ids)
    assert rendered == "<|turn|>user\nthe king<|end|>\n<|turn|>assistant\n"
    assert ids[0] != tokenizer.bos_id  # the model puts BOS in front itself
    assert encode_prompt(chat, "the king") == tokenizer.encode("the king")


def test_chat_prompts_need_a_chat_template(loaded: LoadedModel) -> None:
    with pytest.raises(MLPlaygroundError, match=r"^chat prompts need a tokenizer with a chat"):
        encode_prompt(loaded, "abc", chat=True)
    with pytest.raises(MLPlaygroundError, match="the prompt is empty"):
        encode_prompt(loaded, "", chat=True)


def generate_ids(loaded: LoadedModel, ids: list[int], settings: GenerationSettings) -> str:
    generator = torch.Generator().manual_seed(0)
    return service._generate(loaded, [ids], settings, generator, None)[0].text


def test_sample_texts_continues_the_chat_prompt(loaded: LoadedModel, tmp_path: Path) -> None:
    tokenizer = _chat_tokenizer(tmp_path / "chat")
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)
    model = GPT(config.model_copy(update={"vocab_size": tokenizer.vocab_size}))
    with torch.no_grad():  # sharp logits: greedy continuations depend on the prompt
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10.0)
    chat = replace(loaded, model=model.eval(), tokenizer=tokenizer)
    greedy = SampleConfig(prompt="the king", max_new_tokens=12, temperature=0.0, chat=True)
    # The chat prompt (tested above) is what the decode loop continues: the continuation
    # differs from the plain prompt's, and is the one its ids give.
    as_chat = sample_texts(chat, greedy)
    assert as_chat != sample_texts(chat, greedy.model_copy(update={"chat": False}))
    ids = encode_prompt(chat, "the king", chat=True)
    settings = GenerationSettings.from_sample_config(greedy)
    assert as_chat == [generate_ids(chat, ids, settings)]
