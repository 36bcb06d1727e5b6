"""Fine-tuning on prompt/response pairs scores the response only: the chat template's assistant
header belongs to the prompt, the HF loss skips ignored targets, and a fine-tune lowers the loss
of the responses it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peft", reason="fine-tuning tests need the `hf` extra")

import torch
import torch.nn.functional as F
from tiny_hf import FAST, tiny_model
from transformers import AutoModelForCausalLM

from ml_playground.analysis.evaluate import evaluate_run, evaluate_tokens, split_masks, split_tokens
from ml_playground.config.loading import resolve_config
from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.loader import IGNORE_INDEX
from ml_playground.data.prepare import mask_files, prepare_dataset, split_files
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.finetune.adapter import unwrap
from ml_playground.finetune.model import HFCausalLM
from ml_playground.finetune.run import finetune
from ml_playground.generate.service import load_for_inference
from ml_playground.train.device import Precision

FP32 = Precision(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama", chat=True)


def pairs_config(model_dir: Path, folder: Path, count: int, *extra: str) -> ExperimentConfig:
    path = folder / "pairs.jsonl"
    lines = [json.dumps({"q": f"what say you {i}?", "a": f"good night {i}"}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return resolve_config(
        "tiny_hf_lora",
        [
            f"hf.model='{model_dir.as_posix()}'",
            "data.corpus='jsonl'",
            f"data.path='{path.as_posix()}'",
            "data.prompt_field='q'",
            "data.response_field='a'",
            *extra,
        ],
    )


def split_arrays(directory: Path, info: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    tokens, masks = [], []
    for split in ("train", "val"):
        files = mask_files(directory, info, split)
        assert files is not None
        tokens += [
            np.fromfile(f, dtype=str(info["dtype"])) for f in split_files(directory, info, split)
        ]
        masks += [np.fromfile(f, dtype=np.uint8) for f in files]
    return np.concatenate(tokens), np.concatenate(masks)


def test_chat_mask_scores_the_assistant_turn_after_its_header(
    chat_dir: Path, tmp_path: Path
) -> None:
    config = pairs_config(chat_dir, tmp_path, 12)
    result = prepare_dataset(config.data, tmp_path / "work", config.name)
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    tokens, mask = split_arrays(result.directory, result.info)
    scored = tokenizer.decode(tokens[mask == 1].tolist())
    unscored = tokenizer.decode(tokens[mask == 0].tolist())
    order = [int(part.split("?")[0]) for part in unscored.split("what say you ")[1:]]
    assert sorted(order) == list(range(12))
    # The response, the template's end of turn, and the end-of-text: nothing of the prompt.
    assert scored == "".join(f"good night {i}<|end|>\n</s>" for i in order)
    # The prompt side: the user turn and the assistant header (plus the BOS after each end).
    header = "<|turn|>assistant\n"
    assert unscored.count(header) == 12
    assert f"<|turn|>user\nwhat say you {order[1]}?<|end|>\n{header}<s>" in unscored


def test_plain_pairs_score_the_response_and_end_of_text(llama_dir: Path, tmp_path: Path) -> None:
    config = pairs_config(llama_dir, tmp_path, 12)
    result = prepare_dataset(config.data, tmp_path / "work", config.name)
    tokenizer = load_tokenizer(result.directory / "tokenizer")
    tokens, mask = split_arrays(result.directory, result.info)
    assert tokenizer.bos_id is not None
    assert not mask[tokens == tokenizer.bos_id].any()  # BOS opens the next prompt
    assert mask[tokens == tokenizer.eot_id].all()
    scored = tokenizer.decode(tokens[mask == 1].tolist())
    assert sorted(scored.replace("\n", "").split("</s>")[:-1]) == sorted(
        f"good night {i}" for i in range(12)
    )


def test_hf_loss_skips_ignored_targets(llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True).eval()
    wrapper = HFCausalLM(model, 16)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(5, 250, (2, 12), generator=generator)
    y = torch.randint(5, 250, (2, 12), generator=generator)
    scored = torch.rand(2, 12, generator=generator) < 0.5
    with torch.no_grad():
        logits, loss = wrapper(x, torch.where(scored, y, IGNORE_INDEX))
        _, nothing = wrapper(x, torch.full_like(y, IGNORE_INDEX))
    per_token = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
    assert loss is not None
    torch.testing.assert_close(loss, per_token[scored].mean())
    assert nothing is not None
    assert torch.isfinite(nothing)
    assert nothing.item() == 0.0


def test_a_pairs_fine_tune_lowers_the_response_loss(chat_dir: Path, tmp_path: Path) -> None:
    """The adapter lowers the loss of responses much more than the loss of prompts (compared
    with the base model: the same checkpoint with its adapter switched off)."""
    config = pairs_config(
        chat_dir,
        tmp_path,
        40,
        *FAST,
        "model.block_size=32",
        "train.batch_size=4",
        "train.max_iters=30",
        "train.eval_interval=15",
        "train.learning_rate=3e-2",
        "lora.mlp=true",
    )
    workdir = tmp_path / "work"
    result = finetune(config, workdir)
    rows = [
        json.loads(line)
        for line in (result.train.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    ]
    assert [row["iter"] for row in rows] == [0, 15, 30]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    report = evaluate_run(config, workdir, checkpoint="last", say=lambda _: None)
    assert report["response_only"] is True
    assert report["tokens"] == result.dataset.info["val_response_tokens"]

    loaded = load_for_inference(result.train.run_dir / "checkpoints" / "last", "cpu")
    directory, info = result.dataset.directory, result.dataset.info
    parts, _ = split_tokens(loaded, directory, info, "val")
    found = split_masks(loaded, directory, info, "val", parts)
    assert found is not None
    masks, n_bytes = found

    def prompt_and_response_loss() -> tuple[float, float]:
        response = evaluate_tokens(loaded, parts, n_bytes, FP32, masks=masks)
        everything = evaluate_tokens(loaded, parts, 1, FP32)
        assert everything.tokens == info["val_tokens"]
        prompt_sum = everything.loss_sum - response.loss_sum
        return prompt_sum / (everything.tokens - response.tokens), response.loss

    tuned_prompt, tuned_response = prompt_and_response_loss()
    with unwrap(loaded.model).disable_adapter():
        base_prompt, base_response = prompt_and_response_loss()
    assert base_response - tuned_response > 0.2
    assert base_response - tuned_response > base_prompt - tuned_prompt + 0.1
