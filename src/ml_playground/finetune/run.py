"""`finetune`: hf.model → prepare the corpus with its tokenizer → LoRA training on our loop;
`merge`: a checkpoint's adapter folded into the base weights, saved as a full model.

    resolve   hf.model → a local folder (the only network access; see `hub`)
    prepare   data.* with the model's own tokenizer (data.tokenizer='hf'), the usual shards
    train     `ml_playground.train.loop.train` with `LoRAAdapter`: same loop, callbacks,
              checkpoints (adapter + state), tracking, resume

Everything lands where a from-scratch run's outputs do: `datasets/<exp>/`, `runs/<exp>/<run>/`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.prepare import PrepareResult, Progress, prepare_dataset
from ml_playground.data.tokenizers import (
    HF_TOKENIZER_FILES,
    TOKENIZER_FILE,
    HuggingFaceTokenizer,
    load_tokenizer,
)
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.finetune.adapter import LoRAAdapter
from ml_playground.finetune.hub import resolve_model_dir
from ml_playground.finetune.lora import quiet_peft
from ml_playground.finetune.model import load_pretrained
from ml_playground.fsutil import replace_dir
from ml_playground.train.callbacks import Callback
from ml_playground.train.checkpoint import ADAPTER_FILE, open_checkpoint
from ml_playground.train.device import resolve_device
from ml_playground.train.loop import TrainResult, train


@dataclass(frozen=True)
class FinetuneResult:
    dataset: PrepareResult
    train: TrainResult
    model_dir: Path  # where hf.model was loaded from


def with_local_model(config: ExperimentConfig, model_dir: Path) -> ExperimentConfig:
    """Tokenize with the resolved local folder, so the tokenizer is the exact revision of the
    model (and loading it needs no network)."""
    hf_model = config.hf.model
    if (
        hf_model is None
        or config.data.tokenizer_name != hf_model
        or Path(hf_model).expanduser().is_dir()
    ):
        return config
    data = config.data.model_copy(update={"tokenizer_name": str(model_dir)})
    return config.model_copy(update={"data": data})


def finetune(
    config: ExperimentConfig,
    workdir: Path,
    *,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tune `config.hf.model` with LoRA on `config.data`, in `runs/<name>/<run_name>/`.

    Re-running resumes from `checkpoints/last` (exactly, as `train` does); the dataset is
    prepared once and reused while the corpus and [data] settings are unchanged.
    """
    if config.hf.model is None:
        raise ConfigError(
            f"{config.name} has no hf.model; set hf.model=/path/to/model (or a Hub id such as "
            f"Qwen/Qwen2.5-1.5B), or use `ml-playground train` for a GPT from scratch"
        )
    model_dir = resolve_model_dir(config.hf)
    config = with_local_model(config, model_dir)
    dataset = prepare_dataset(config.data, workdir, config.name, progress=progress)
    tokenizer = load_tokenizer(dataset.directory / "tokenizer")
    bos_id = tokenizer.bos_id if isinstance(tokenizer, HuggingFaceTokenizer) else None
    adapter = LoRAAdapter(model_dir, bos_id=bos_id, usable_vocab=tokenizer.vocab_size)
    result = train(config, workdir, resume=resume, callbacks=callbacks, adapter=adapter)
    return FinetuneResult(dataset, result, model_dir)


def merge(checkpoint_dir: Path, out: Path, device: str = "auto") -> Path:
    """Fold a LoRA checkpoint into its base model and write the result to `out`.

    `out` is a Hugging Face model folder (`config.json`, `model.safetensors`, tokenizer files:
    `AutoModelForCausalLM.from_pretrained(out)` loads it) and also one of our checkpoints
    (`state.json`, `config.toml`, `tokenizer/`), so `sample`/`serve` take it as `--checkpoint`.
    Written to a staging folder and renamed into place, like every checkpoint.
    """
    checkpoint = open_checkpoint(checkpoint_dir)
    if not (checkpoint.path / ADAPTER_FILE).is_file():
        raise CheckpointError(
            f"{checkpoint.path} holds no LoRA adapter ({ADAPTER_FILE}); merge takes a checkpoint "
            f"of `ml-playground finetune`"
        )
    hf = checkpoint.config.hf
    base = load_pretrained(resolve_model_dir(hf), hf, resolve_device(device), quantize=False)
    with torch.no_grad(), quiet_peft():
        merged = PeftModel.from_pretrained(base, str(checkpoint.path)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    source = checkpoint.tokenizer_dir
    for name in (TOKENIZER_FILE, *HF_TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    shutil.copytree(source, staging / "tokenizer")
    state = dict(checkpoint.state, merged_from=str(checkpoint.path))
    (staging / "state.json").write_text(json.dumps(state, indent=1) + "\n", "utf-8")
    shutil.copy2(checkpoint.path / "config.toml", staging / "config.toml")
    replace_dir(staging, out)
    return out
