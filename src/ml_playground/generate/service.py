"""Sampling from a checkpoint directory: load model + tokenizer, then generate or stream text.

Reading a checkpoint uses `train.checkpoint` (the one place that knows the format); nothing here
needs a dataset or a run directory, only the checkpoint.

For servers and other callers:

    loaded = load_for_inference(path, "auto", "model")
    settings = GenerationSettings(max_new_tokens=64, temperature=0.8, stop=("\\n\\n",), seed=1)
    result = generate_text(loaded, "ROMEO:", settings, on_text=print)
    result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason

`generate_batch` does several prompts in one batch (rows finish independently) and
`stream_batch` yields the same text as `TextEvent`s. The model is only read, never modified, so
several threads may share one `LoadedModel` (each call builds its own cache and RNG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from ml_playground.config.schema import SampleConfig
from ml_playground.data.tokenizers import HuggingFaceTokenizer, Tokenizer, load_tokenizer
from ml_playground.errors import CheckpointError, MLPlaygroundError
from ml_playground.generate.decode import BatchDecoder, FinishReason
from ml_playground.generate.sampling import SamplingParams
from ml_playground.generate.stop import StopTextStream
from ml_playground.model.gpt import GPT
from ml_playground.train.checkpoint import (
    Checkpoint,
    load_ema_weights,
    load_weights,
    open_checkpoint,
)
from ml_playground.train.device import resolve_device


@dataclass(frozen=True)
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    device: torch.device


@dataclass(frozen=True)
class GenerationSettings:
    """Everything one generation request can set.

    - `temperature` 0 is greedy (deterministic, no seed needed); `top_k`/`top_p` None = off.
    - `repetition_penalty` > 1 discourages tokens already in the prompt or the output (CTRL).
    - `min_new_tokens`: end-of-text cannot be produced before this many tokens (tokenizers with
      an `eot_id` only); producing end-of-text otherwise ends the text (`finish_reason="stop"`).
    - `stop`: strings that end the text; the returned text excludes the stop string.
    - `seed`: None draws from a fresh, unseeded generator.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    stop: tuple[str, ...] = field(default=())
    seed: int | None = None

    @classmethod
    def from_sample_config(cls, settings: SampleConfig) -> GenerationSettings:
        return cls(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k or None,
            top_p=settings.top_p,
            repetition_penalty=settings.repetition_penalty,
            min_new_tokens=settings.min_new_tokens,
            stop=tuple(settings.stop),
            seed=settings.seed,
        )

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            self.temperature, self.top_k, self.top_p, repetition_penalty=self.repetition_penalty
        )


@dataclass(frozen=True)
class GenerationResult:
    """One completion: `text` excludes the prompt and any stop string or end-of-text token.

    `completion_tokens` counts every token generated, including a final end-of-text token and
    the tokens of a stop string.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class TextEvent:
    """A piece of streamed text for prompt `index`; `finish_reason` is set on its last event."""

    index: int
    text: str
    finish_reason: FinishReason | None = None


def load_for_inference(path: Path, device: str = "auto", weights: str = "model") -> LoadedModel:
    """A ready-to-sample model (eval mode) from a checkpoint directory.

    `weights="ema"` loads the moving average of the weights (`ema.safetensors`) instead. A
    fine-tuned Hugging Face model (base + LoRA adapter, or merged) loads through
    `ml_playground.finetune`, imported only then (it needs transformers); its wrapper has the
    interface of GPT that decoding uses.
    """
    checkpoint = open_checkpoint(path)
    tokenizer = load_tokenizer(checkpoint.tokenizer_dir)
    torch_device = resolve_device(device)
    if checkpoint.config.hf.model is not None:
        if weights == "ema":
            raise CheckpointError(f"{path} is a LoRA fine-tune, which keeps no EMA weights")
        from ml_playground.finetune.inference import load_finetuned

        finetuned = load_finetuned(checkpoint, tokenizer, torch_device)
        return LoadedModel(cast(GPT, finetuned), tokenizer, checkpoint, torch_device)
    model = GPT(checkpoint.config.model)
    load_weights(checkpoint, model)
    if weights == "ema":
        load_ema_weights(checkpoint, model)
    model.to(torch_device).eval()
    return LoadedModel(model, tokenizer, checkpoint, torch_device)


def encode_prompt(loaded: LoadedModel, prompt: str, chat: bool = False) -> list[int]:
    """The prompt's token ids, or a clear error (empty, or characters the tokenizer lacks).

    `chat` renders it as a user turn with the chat template's assistant header, as `prepare`
    rendered the prompts of a chat fine-tune, without the leading BOS: the model adds that.
    """
    if not prompt:
        raise MLPlaygroundError("the prompt is empty; give at least one character (--prompt)")
    if not chat:
        return loaded.tokenizer.encode(prompt)
    return encode_messages(loaded, [{"role": "user", "content": prompt}])


def encode_messages(loaded: LoadedModel, messages: Sequence[dict[str, str]]) -> list[int]:
    """A conversation through the tokenizer's chat template, ending with the assistant header
    (the model writes the next turn), without the leading BOS: the model adds that."""
    tokenizer = loaded.tokenizer
    if not isinstance(tokenizer, HuggingFaceTokenizer) or tokenizer.chat_template is None:
        raise MLPlaygroundError(
            f"chat prompts need a tokenizer with a chat template; this checkpoint's "
            f"({tokenizer.kind}) has none: drop --chat (sample.chat=false), or use completions"
        )
    ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
    return ids[1:] if ids and ids[0] == tokenizer.bos_id else ids


def _generator(loaded: LoadedModel, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=loaded.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _stream(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    generator: torch.Generator,
    texts: list[StopTextStream],
    counts: list[int] | None = None,
) -> Iterator[TextEvent]:
    """The decode loop under every public function; `counts[i]` tallies prompt i's tokens."""
    eot_id = loaded.tokenizer.eot_id
    decoder = BatchDecoder(
        loaded.model,
        prompt_ids,
        settings.sampling_params(),
        settings.max_new_tokens,
        generator=generator,
        eot_id=eot_id,
        min_new_tokens=settings.min_new_tokens,
    )
    while not decoder.done:
        for step in decoder.step():
            if counts is not None:
                counts[step.row] += 1
            text = texts[step.row]
            delta = "" if step.token == eot_id else text.push(step.token)
            reason = step.finish_reason
            if text.stopped and reason is None:
                decoder.finish(step.row, "stop")
                reason = "stop"
            if reason is not None:
                delta += text.flush()
            if delta or reason is not None:
                yield TextEvent(step.row, delta, reason)


def stream_batch(
    loaded: LoadedModel, prompts: Sequence[str], settings: GenerationSettings
) -> Iterator[TextEvent]:
    """Generate a continuation of every prompt in one batch, yielding text as it is settled.

    Each prompt's events concatenate to its `GenerationResult.text`; text that might be the start
    of a stop string is held back until it is known not to be. Every prompt gets exactly one
    event with `finish_reason` set, its last. Raises `MLPlaygroundError` for an empty prompt.
    """
    prompt_ids = [encode_prompt(loaded, prompt) for prompt in prompts]
    texts = [StopTextStream(loaded.tokenizer.decode, settings.stop) for _ in prompts]
    yield from _stream(loaded, prompt_ids, settings, _generator(loaded, settings.seed), texts)


def generate_batch(
    loaded: LoadedModel,
    prompts: Sequence[str],
    settings: GenerationSettings,
    on_text: Callable[[int, str], None] | None = None,
) -> list[GenerationResult]:
    """Continuations of several prompts, generated together; `on_text(index, delta)` streams.

    With a seed the result is reproducible for the same prompts and settings (the batch shares
    one generator, so prompt i's sample depends on the others in the batch; greedy does not).
    """
    prompt_ids = [encode_prompt(loaded, prompt) for prompt in prompts]
    return generate_from_ids(loaded, prompt_ids, settings, on_text)


def generate_from_ids(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    on_text: Callable[[int, str], None] | None = None,
) -> list[GenerationResult]:
    """`generate_batch` for prompts already encoded (a chat rendered by `encode_messages`)."""
    if any(len(ids) == 0 for ids in prompt_ids):
        raise MLPlaygroundError("the prompt is empty; give at least one token")
    return _generate(loaded, prompt_ids, settings, _generator(loaded, settings.seed), on_text)


def _generate(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    generator: torch.Generator,
    on_text: Callable[[int, str], None] | None,
) -> list[GenerationResult]:
    texts = [StopTextStream(loaded.tokenizer.decode, settings.stop) for _ in prompt_ids]
    counts = [0] * len(prompt_ids)
    reasons: dict[int, FinishReason] = {}
    for event in _stream(loaded, prompt_ids, settings, generator, texts, counts):
        if event.text and on_text is not None:
            on_text(event.index, event.text)
        if event.finish_reason is not None:
            reasons[event.index] = event.finish_reason
    return [
        GenerationResult(texts[i].text, len(prompt_ids[i]), counts[i], reasons[i])
        for i in range(len(prompt_ids))
    ]


def generate_text(
    loaded: LoadedModel,
    prompt: str,
    settings: GenerationSettings,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """One continuation of `prompt` (KV cache, stop strings, streaming through `on_text(delta)`).

    The deltas passed to `on_text` concatenate to `result.text`. Raises `MLPlaygroundError` for
    an empty prompt. Prompts longer than the model's block size are cut to their last tokens.
    """
    callback = None if on_text is None else (lambda _index, delta: on_text(delta))
    return generate_batch(loaded, [prompt], settings, callback)[0]


def sample_texts(
    loaded: LoadedModel,
    settings: SampleConfig,
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Draw `settings.num_samples` continuations of `settings.prompt`, one after another.

    `on_text(sample_index, delta)` receives text as it is generated (for streaming to a terminal).
    The returned strings are the continuations without the prompt.
    """
    prompt_ids = encode_prompt(loaded, settings.prompt, settings.chat)
    generation = GenerationSettings.from_sample_config(settings)
    generator = _generator(loaded, settings.seed)
    outputs = []
    for index in range(settings.num_samples):
        forward = None
        if on_text is not None:
            forward = (lambda i: lambda _row, delta: on_text(i, delta))(index)
        result = _generate(loaded, [prompt_ids], generation, generator, forward)[0]
        outputs.append(result.text)
    return outputs
