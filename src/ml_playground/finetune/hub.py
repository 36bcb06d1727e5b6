"""Where `hf.model` lives on disk: a local folder, or a Hugging Face Hub snapshot.

All network access of a fine-tune happens here, in one `snapshot_download`; everything after it
(tokenizer, model, adapter) loads from the local folder with `local_files_only=True`. With
`HF_HUB_OFFLINE` set only the local cache is consulted, so an offline machine fails at once with
a message that says how to point `hf.model` at a folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ml_playground.config.schema import HFConfig
from ml_playground.errors import ConfigError, MLPlaygroundError

# What a causal LM needs from a Hub repo: configs, safetensors weights, tokenizer files (not the
# .bin/.gguf/.onnx copies many repos also carry).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
LOCAL_HINT = "hf.model=/path/to/model (a folder written by save_pretrained)"


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` (or transformers' older `TRANSFORMERS_OFFLINE`) is set, read now."""
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or Path(name).drive != "" or name.count("/") > 1


def resolve_model_dir(hf: HFConfig) -> Path:
    """`hf.model` as a local folder holding `config.json`: itself, or its Hub snapshot.

    A Hub id is downloaded (once, into the Hugging Face cache) unless offline; offline, only a
    cached snapshot will do. Every failure is an `MLPlaygroundError` naming the fix.
    """
    if hf.model is None:
        raise ConfigError(
            "fine-tuning needs hf.model: a Hub id (e.g. Qwen/Qwen2.5-1.5B) or a folder"
        )
    path = Path(hf.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MLPlaygroundError(
                f"hf.model={hf.model} has no config.json; point it at a folder written by "
                f"save_pretrained (config.json, *.safetensors, tokenizer files)"
            )
        return path
    if path.exists() or looks_like_path(hf.model):
        raise MLPlaygroundError(f"hf.model={hf.model}: no such directory")
    patterns = [*SNAPSHOT_PATTERNS, *(["*.py"] if hf.trust_remote_code else [])]
    offline = hub_offline()
    try:
        folder = snapshot_download(
            hf.model, revision=hf.revision, allow_patterns=patterns, local_files_only=offline
        )
    except GatedRepoError:
        raise MLPlaygroundError(
            f"hf.model={hf.model} is gated: accept its license on huggingface.co, then log in "
            f"(`hf auth login` or HF_TOKEN), or use {LOCAL_HINT}"
        ) from None
    except RevisionNotFoundError:
        raise MLPlaygroundError(
            f"hf.revision={hf.revision} does not exist in {hf.model}; check the branch, tag or "
            f"commit"
        ) from None
    except RepositoryNotFoundError:
        raise MLPlaygroundError(
            f"hf.model={hf.model} is not a model on the Hugging Face Hub (or it is private); "
            f"check the id, or use {LOCAL_HINT}"
        ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise MLPlaygroundError(
                f"hf.model={hf.model} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                f"is set; download it once with network access (`hf download {hf.model}`), or "
                f"use {LOCAL_HINT}"
            ) from None
        raise MLPlaygroundError(
            f"cannot download hf.model={hf.model} (no network?) and it is not cached; use "
            f"{LOCAL_HINT}"
        ) from None
    except (OSError, ValueError) as exc:
        raise MLPlaygroundError(
            f"cannot fetch hf.model={hf.model} from the Hugging Face Hub ({exc}); use {LOCAL_HINT}"
        ) from None
    return Path(folder)
