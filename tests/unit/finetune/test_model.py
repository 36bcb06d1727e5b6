"""HFCausalLM: a transformers model behind GPT's interface (loss, sampling, KV-cache decode)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("peft", reason="fine-tuning tests need the `hf` extra")

import torch
from tiny_hf import tiny_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from ml_playground.config.schema import HFConfig
from ml_playground.errors import MLPlaygroundError, TrainingError
from ml_playground.finetune.model import (
    HFCausalLM,
    context_length,
    quantization_config,
    weights_dtype,
)
from ml_playground.generate.decode import BatchDecoder
from ml_playground.generate.sampling import SamplingParams


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "gpt2")


GREEDY = SamplingParams(temperature=0.0)


def load(folder: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    return model.eval()


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request: pytest.FixtureRequest, llama_dir: Path, gpt2_dir: Path) -> Path:
    return llama_dir if request.param == "llama" else gpt2_dir


def test_loss_is_transformers_loss_on_the_shifted_sequence(model_dir: Path) -> None:
    """Our batches come shifted (x, y = x[1:]); the loss must equal HF's own `labels` loss."""
    model = load(model_dir)
    tokens = torch.randint(5, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    _, loss = HFCausalLM(model, 16)(tokens[:, :-1], tokens[:, 1:])
    expected = model(input_ids=tokens, labels=tokens).loss
    assert loss is not None
    torch.testing.assert_close(loss, expected)


def decode(
    model: HFCausalLM, prompts: list[list[int]], steps: int, use_cache: bool
) -> list[list[int]]:
    decoder = BatchDecoder(model, prompts, GREEDY, steps, use_cache=use_cache)  # type: ignore[arg-type]
    while not decoder.done:
        decoder.step()
    return [tokens[len(prompt) :] for tokens, prompt in zip(decoder.tokens, prompts, strict=True)]


@pytest.mark.parametrize("bos_id", [None, 1])
def test_cached_batched_decode_matches_uncached_and_single_rows(
    model_dir: Path, bos_id: int | None
) -> None:
    """Left padding, the KV cache, sliding-window re-prefill (block 10 < 7 + 12 tokens) and an
    internal BOS change nothing: every row gets the tokens it gets alone without a cache."""
    wrapper = HFCausalLM(load(model_dir), 10, bos_id=bos_id).eval()
    prompts = [[20, 31, 42, 53, 64, 75, 86], [97, 108, 119]]
    batched = decode(wrapper, prompts, 12, use_cache=True)
    assert batched == decode(wrapper, prompts, 12, use_cache=False)
    assert [decode(wrapper, [p], 12, use_cache=True)[0] for p in prompts] == batched
    assert batched == decode(wrapper, prompts, 12, use_cache=True)  # greedy is deterministic


def test_sampling_logits_see_bos_first(llama_dir: Path) -> None:
    model = load(llama_dir)
    idx = torch.tensor([[20, 31, 42]])
    logits, loss = HFCausalLM(model, 16, bos_id=1)(idx)
    expected = model(input_ids=torch.tensor([[1, 20, 31, 42]])).logits[:, -1:]
    assert loss is None
    torch.testing.assert_close(logits, expected)


def test_ids_past_the_tokenizer_vocabulary_are_never_sampled(llama_dir: Path) -> None:
    model = load(llama_dir)
    vocab = model.config.vocab_size
    wrapper = HFCausalLM(model, 16, usable_vocab=vocab - 5).eval()
    logits, _ = wrapper(torch.tensor([[20, 31]]))
    assert torch.isinf(logits[..., vocab - 5 :]).all()
    assert torch.isfinite(logits[..., : vocab - 5]).all()
    assert wrapper.vocab_size == vocab  # the decoder's vocabulary is the logits' width


def test_activation_checkpointing_recomputes_with_equal_gradients(llama_dir: Path) -> None:
    tokens = torch.randint(5, 250, (2, 9), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        wrapper = HFCausalLM(load(llama_dir), 16).train()
        wrapper.activation_checkpointing = checkpointing
        _, loss = wrapper(tokens[:, :-1], tokens[:, 1:])
        assert loss is not None
        loss.backward()
        grads.append([p.grad.clone() for p in wrapper.parameters() if p.grad is not None])
    assert wrapper.model.is_activation_checkpointing
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed)


def test_model_reports_params_and_context(gpt2_dir: Path) -> None:
    model = load(gpt2_dir)
    wrapper = HFCausalLM(model, 16)
    assert wrapper.num_params() == sum(p.numel() for p in model.parameters())
    assert wrapper.flops_per_token() > 4 * wrapper.num_params()
    assert context_length(model) == 128


def test_weights_dtype() -> None:
    cpu = torch.device("cpu")
    assert weights_dtype(HFConfig(), cpu) == torch.float32
    assert weights_dtype(HFConfig(dtype="bfloat16"), cpu) == torch.bfloat16
    with pytest.raises(TrainingError, match=r"hf\.dtype=float16"):
        weights_dtype(HFConfig(dtype="float16"), cpu)


def test_4bit_needs_cuda_and_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    hf = HFConfig(model="m", load_in_4bit=True)
    with pytest.raises(MLPlaygroundError, match="needs a CUDA GPU"):
        quantization_config(hf, torch.device("cpu"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MLPlaygroundError, match="pip install bitsandbytes"):
        quantization_config(hf, torch.device("cuda"))
