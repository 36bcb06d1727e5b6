"""A Hugging Face causal LM behind the interface of our GPT, so the loop and the decoder run it.

`HFCausalLM` wraps a `transformers` model (plain, PEFT-wrapped, or merged) and offers what
`ml_playground.train.loop` and `ml_playground.generate.decode` use of `GPT`:

- `forward(idx, targets)` → `(logits, mean cross-entropy)`: training and evaluation. `targets`
  are the next tokens (the loop's batches are already shifted), so the loss is computed here,
  not by transformers' `labels` (which would shift once more).
- `forward(idx)` → logits of the last position only: the simple sampling loop.
- `forward(idx, cache=cache)` with `new_cache(batch, pad)`: the KV-cache decode loop. Rows are
  left-padded to a common width; the attention mask hides the padding and position ids start at
  0 on each row's first real token, so a row computes what it would alone (transformers'
  `past_key_values` hold the keys and values).
- `block_size`, `vocab_size`, `wte`, `num_params()`, `flops_per_token()`.

A tokenizer that puts BOS before every text (Gemma, Llama) trained its model to expect it, so at
inference the wrapper starts each context window with BOS itself (`bos_id`); the prepared
training data already has BOS after every end-of-text. Logits of ids the tokenizer cannot decode
(embedding rows padded past the vocabulary, as in Qwen) are masked so they are never sampled.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from ml_playground.config.schema import HFConfig
from ml_playground.errors import MLPlaygroundError, TrainingError
from ml_playground.model.gpt import cross_entropy
from ml_playground.train.device import DTYPES, resolve_dtype


def weights_dtype(hf: HFConfig, device: torch.device) -> torch.dtype:
    """`hf.dtype`: auto = bfloat16 on CUDA (when supported) and MPS, float32 on the CPU.

    Frozen base weights in bfloat16 halve memory; the LoRA weights PEFT adds stay float32.
    """
    if hf.dtype != "auto":
        try:
            return resolve_dtype(hf.dtype, device)
        except TrainingError as exc:
            raise TrainingError(str(exc).replace("train.dtype", "hf.dtype")) from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "mps":
        return torch.bfloat16
    return DTYPES["float32"]


def quantization_config(hf: HFConfig, device: torch.device) -> BitsAndBytesConfig:
    """QLoRA's 4-bit NF4 with double quantization, computing in bfloat16 (Dettmers et al. 2023)."""
    if device.type != "cuda":
        raise MLPlaygroundError(
            f"hf.load_in_4bit needs a CUDA GPU, but the device is {device.type}; set "
            f"hf.load_in_4bit=false"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MLPlaygroundError(
            "hf.load_in_4bit needs bitsandbytes: pip install bitsandbytes (or set "
            "hf.load_in_4bit=false)"
        )
    compute = weights_dtype(hf, device)
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if compute == torch.float32 else compute,
    )


def load_pretrained(
    folder: Path, hf: HFConfig, device: torch.device, *, quantize: bool
) -> PreTrainedModel:
    """`AutoModelForCausalLM` from a local folder (no network), on `device`.

    `quantize` honours `hf.load_in_4bit` (training and base+adapter inference); merging always
    loads full-precision weights, since a merged 4-bit model would lose the adapter's precision.
    """
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Loading weights" bars
    kwargs: dict[str, Any] = {
        "dtype": weights_dtype(hf, device),
        "local_files_only": True,
        "trust_remote_code": hf.trust_remote_code,
    }
    if quantize and hf.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(hf, device)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        # OSError: missing/corrupt files; ValueError/KeyError: an architecture transformers
        # does not know (too old a transformers, or remote code without trust_remote_code).
        raise MLPlaygroundError(
            f"cannot load hf.model={hf.model} as a causal LM from {folder}: {exc}"
        ) from None
    if not (quantize and hf.load_in_4bit):  # bitsandbytes placed it already
        nn.Module.to(model, device)
    return model


def context_length(model: nn.Module) -> int | None:
    """The model's own context window (`max_position_embeddings`, GPT-2's `n_positions`)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class HFCache:
    """The decode loop's cache for an HF model: transformers' `past_key_values` plus the left
    padding of each row. `length` counts the tokens the decoder fed (BOS excluded)."""

    def __init__(self, batch: int, pad: torch.Tensor | None, max_len: int, device: torch.device):
        self.pad = pad if pad is not None else torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0
        self.fed = 0  # positions in `past`, BOS included
        self.past: Any = None

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows leave it)."""
        self.pad = self.pad.index_select(0, rows)
        if self.past is not None:
            self.past.batch_select_indices(rows)


class HFCausalLM(nn.Module):
    """A transformers causal LM with our GPT's interface; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        block_size: int,
        *,
        bos_id: int | None = None,
        usable_vocab: int | None = None,
        checkpointing: bool = False,
    ) -> None:
        """`checkpointing`: gradient checkpointing is already on in `model` (hf.gradient_...)."""
        super().__init__()
        self.model = model
        self.block_size = block_size
        self.bos_id = bos_id
        self.vocab_size = int(_weight(model, "get_output_embeddings").shape[0])
        self.usable_vocab = usable_vocab if usable_vocab is not None else self.vocab_size
        self._checkpointing = checkpointing

    @property
    def wte(self) -> nn.Embedding:
        """The token embedding (the decoder reads the device from its weight)."""
        embeddings = getattr(self.model, "get_input_embeddings")()  # noqa: B009
        assert isinstance(embeddings, nn.Embedding)
        return embeddings

    @property
    def activation_checkpointing(self) -> bool:
        return self._checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        """`train.activation_checkpointing` (set by the loop) does what `hf.gradient_checkpointing`
        does: recompute each layer in the backward pass."""
        if enabled and not self._checkpointing:
            enable_gradient_checkpointing(self.model)
        self._checkpointing = self._checkpointing or enabled

    def num_params(self) -> int:
        """Every parameter, frozen base weights included."""
        return sum(p.numel() for p in self.parameters())

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per trainable weight (forward, input and weight
        gradients), 4 per frozen one (no weight gradient), plus attention (PaLM appendix B)."""
        trainable = self.trainable_params()
        frozen = self.num_params() - trainable
        config = getattr(self.model, "config", None)
        layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
        width = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
        return 6 * trainable + 4 * frozen + 12 * layers * width * self.block_size

    def new_cache(self, batch: int, pad: torch.Tensor | None = None) -> HFCache:
        return HFCache(batch, pad, self.block_size, self.wte.weight.device)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: HFCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if cache is not None:
            return self._mask(self._cached(idx, cache)), None
        if targets is None:  # sampling: the next token after the whole window
            logits = self.model(input_ids=self._with_bos(idx), use_cache=False).logits
            return self._mask(logits[:, -1:, :].float()), None
        logits = self.model(input_ids=idx, use_cache=False).logits
        return logits, cross_entropy(logits.float(), targets)  # skips IGNORE_INDEX targets

    def _with_bos(self, idx: torch.Tensor) -> torch.Tensor:
        if self.bos_id is None:
            return idx
        bos = torch.full((idx.size(0), 1), self.bos_id, dtype=idx.dtype, device=idx.device)
        return torch.cat([bos, idx], dim=1)

    def _cached(self, idx: torch.Tensor, cache: HFCache) -> torch.Tensor:
        batch, time = idx.shape
        if cache.length + time > cache.max_len:
            raise ValueError(
                f"KV cache holds {cache.max_len} positions; {cache.length} used, {time} more given"
            )
        if cache.fed == 0 and self.bos_id is not None:
            # BOS goes right after each row's left padding: [pad..., BOS, tokens...].
            idx = torch.cat([idx.new_zeros(batch, 1), idx], dim=1)
            idx[torch.arange(batch, device=idx.device), cache.pad] = self.bos_id
        total = cache.fed + idx.size(1)
        slots = torch.arange(total, device=idx.device)
        attention_mask = (slots[None, :] >= cache.pad[:, None]).long()
        positions = (slots[None, cache.fed :] - cache.pad[:, None]).clamp(min=0)
        out = self.model(
            input_ids=idx,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache.past,
            use_cache=True,
        )
        cache.past = out.past_key_values
        cache.fed = total
        cache.length += time
        logits: torch.Tensor = out.logits[:, -1:, :].float()
        return logits

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Ids past the tokenizer's vocabulary (padding rows of the embedding) are never chosen."""
        if self.usable_vocab < logits.size(-1):
            logits = logits.clone()
            logits[..., self.usable_vocab :] = float("-inf")
        return logits


def _weight(model: nn.Module, getter: str) -> torch.Tensor:
    """The weight of a transformers model's input or output embedding."""
    module = getattr(model, getter)()
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(model).__name__}.{getter}() has no weight")
    return weight


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant: frozen inputs need no grad).

    transformers 5 calls it activation checkpointing; older versions gradient checkpointing.
    """
    with contextlib.suppress(AttributeError):
        model.config.use_cache = False  # type: ignore[union-attr]
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        raise MLPlaygroundError("this model does not support gradient checkpointing")
    enable(gradient_checkpointing_kwargs=kwargs)
