"""`export hf`: our GPT as a Hugging Face `GPT2LMHeadModel` directory.

The directory holds what `save_pretrained` writes (`config.json`, `model.safetensors`,
`generation_config.json`), the tokenizer (`tokenizer.json`, `tokenizer_config.json`) and a short
`README.md`, so this works offline:

    model = AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

The mapping is GPT-2's own: `transformer.{wte,wpe,h.N.*,ln_f}`, with the four linear layers
transposed (Hugging Face's GPT-2 keeps them as `Conv1D`, in x out). `activation_function` is
`"gelu"` (exact erf, like `nn.GELU()`), not GPT-2's tanh approximation `"gelu_new"`, so the
logits match ours to float32 rounding. Before the directory is moved into place, it is loaded
back with `AutoModelForCausalLM` and `AutoTokenizer` and compared with the checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ml_playground.config.schema import SampleConfig
from ml_playground.export.common import (
    ExportError,
    ExportReport,
    check_dir_destination,
    list_files,
    staged_dir,
)
from ml_playground.export.hf_tokenizer import probe_text, save_hf_tokenizer
from ml_playground.export.source import LAYER_NORM_EPS, LINEARS, gpt2_tensors
from ml_playground.generate.service import LoadedModel
from ml_playground.model.gpt import GPT

LOGIT_TOLERANCE = 1e-4
"""Largest |ours - Hugging Face| logit difference (float32) an export may show."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ExportError(
            "export hf needs transformers (the `hf` extra): pip install 'ml_playground[hf]'"
        ) from None
    return transformers


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars and info chatter while we save and re-load."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def hf_config(model: GPT, eot_id: int | None) -> Any:
    """The `GPT2Config` of our model (no dropout: an export is for inference)."""
    transformers = _transformers()
    cfg = model.config
    return transformers.GPT2Config(
        vocab_size=model.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.n_embd,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        # GPT2Config defaults these to 50256, which is out of range for a small vocabulary.
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=None,
    )


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under `GPT2LMHeadModel`'s names (biases as zeros when the model has none)."""
    state = {}
    for name, tensor in gpt2_tensors(model).items():
        module = name.rsplit(".", 1)[0]
        is_linear = module.split(".", 2)[-1] in LINEARS and name.endswith(".weight")
        state[f"transformer.{name}"] = tensor.t().contiguous() if is_linear else tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def build_hf_model(model: GPT, eot_id: int | None) -> Any:
    """A `GPT2LMHeadModel` (float32, eval mode) holding our weights."""
    transformers = _transformers()
    hf_model = transformers.GPT2LMHeadModel(hf_config(model, eot_id))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    if missing or unexpected:
        raise ExportError(
            f"transformers' GPT-2 does not fit our tensors (missing {missing}, unexpected "
            f"{unexpected}); this transformers version is not supported"
        )
    return hf_model.float().eval()


def _generation_config(sample: SampleConfig, eot_id: int | None) -> Any:
    """`generation_config.json` from `[sample]`, so `generate()` samples as `sample` does."""
    transformers = _transformers()
    options: dict[str, Any] = {
        "max_new_tokens": sample.max_new_tokens,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
    }
    if sample.temperature == 0:
        options["do_sample"] = False
    else:
        options |= {"do_sample": True, "temperature": sample.temperature}
        options["top_k"] = sample.top_k or None
        if sample.top_p is not None:
            options["top_p"] = sample.top_p
    if sample.repetition_penalty != 1.0:
        options["repetition_penalty"] = sample.repetition_penalty
    return transformers.GenerationConfig(**options)


def _readme(name: str, block_size: int, tokenizer_note: str) -> str:
    return f"""# {name}

A GPT-2-architecture language model exported by `ml-playground export hf`.
Context length: {block_size} tokens. {tokenizer_note}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(".")
tokenizer = AutoTokenizer.from_pretrained(".")
ids = tokenizer("ROMEO.", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0]))
```
"""


def export_hf(
    loaded: LoadedModel, target: Path, sample: SampleConfig, name: str, force: bool
) -> ExportReport:
    """Write `loaded` as a Hugging Face GPT-2 directory at `target`, verified, then moved there."""
    check_dir_destination(target, force)
    report = ExportReport(target)
    model, tokenizer = loaded.model, loaded.tokenizer
    with _quiet(), staged_dir(target) as staging:
        hf_model = build_hf_model(model, tokenizer.eot_id)
        hf_model.generation_config = _generation_config(sample, tokenizer.eot_id)
        hf_model.save_pretrained(str(staging))
        try:
            save_hf_tokenizer(tokenizer, staging, model.block_size)
            tokenizer_note = "The tokenizer loads with `AutoTokenizer`."
        except ExportError as exc:
            _fallback_tokenizer(loaded, staging)
            tokenizer_note = (
                "The tokenizer has no Hugging Face form; ml_playground's own files are in "
                "`ml_playground_tokenizer/`."
            )
            report.notes.append(f"tokenizer not converted ({exc}); copied ours instead")
        (staging / "README.md").write_text(_readme(name, model.block_size, tokenizer_note), "utf-8")
        report.checks += verify_hf_model(staging, model)
        if (staging / "tokenizer.json").is_file():
            check = verify_hf_tokenizer(staging, loaded, sample.prompt)
            if check is None:
                report.checks.append("tokenizer: AutoTokenizer encodes the probe text as ours")
            else:
                for file in ("tokenizer.json", "tokenizer_config.json"):
                    (staging / file).unlink(missing_ok=True)
                _fallback_tokenizer(loaded, staging)
                report.notes.append(f"tokenizer not exported: {check}; copied ours instead")
    report.files = [(target / path, size) for path, size in list_files(target)]
    return report


def _fallback_tokenizer(loaded: LoadedModel, staging: Path) -> None:
    shutil.copytree(loaded.checkpoint.tokenizer_dir, staging / "ml_playground_tokenizer")


def verify_hf_model(directory: Path, model: GPT) -> list[str]:
    """Load `directory` with `AutoModelForCausalLM` and compare its logits with `model`'s."""
    transformers = _transformers()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), local_files_only=True, dtype=torch.float32
    ).eval()
    generator = torch.Generator().manual_seed(0)
    length = min(model.block_size, 64)
    idx = torch.randint(0, model.vocab_size, (2, length), generator=generator)
    with torch.no_grad():
        ours, _ = model(idx, idx)
        theirs = hf_model(idx).logits
    diff = float((ours - theirs).abs().max())
    if not diff <= LOGIT_TOLERANCE:
        raise ExportError(
            f"the exported model's logits differ from the checkpoint's by {diff:.2e} "
            f"(tolerance {LOGIT_TOLERANCE:g}); this is a bug in export, please report it"
        )
    return [f"model: AutoModelForCausalLM logits match ours (max |diff| {diff:.1e})"]


def verify_hf_tokenizer(directory: Path, loaded: LoadedModel, prompt: str) -> str | None:
    """None when `AutoTokenizer` encodes a probe text exactly as ours does, else why not."""
    transformers = _transformers()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    text = probe_text(loaded.tokenizer, prompt)
    ours = loaded.tokenizer.encode(text)
    theirs = list(hf_tokenizer(text, add_special_tokens=False)["input_ids"])
    if ours != theirs:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        return f"AutoTokenizer encodes differently from token {first} of the probe text on"
    if hf_tokenizer.decode(theirs) != loaded.tokenizer.decode(ours):
        return "AutoTokenizer decodes the probe text differently"
    return None
