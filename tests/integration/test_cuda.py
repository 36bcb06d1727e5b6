"""The CUDA paths of the engine: bf16 autocast, fp16 + GradScaler, fused AdamW, torch.compile + EMA,
exact resume, LoRA in bf16. Marked `gpu`; skipped without CUDA (CI has none).

Run them on a GPU machine with `pytest -m gpu` (tools/gpu_checks.sh tests). Each trains the tiny
experiment for a few dozen steps, so the whole file takes about a minute, mostly compilation.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml_playground.config.schema import ExperimentConfig, SampleConfig
from ml_playground.data.prepare import prepare_dataset
from ml_playground.generate.service import load_for_inference, sample_texts
from ml_playground.train.loop import TrainResult, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MakeConfig = Callable[..., ExperimentConfig]
CUDA = ("train.device='cuda'",)


def run(make_config: MakeConfig, workdir: Path, *overrides: str) -> TrainResult:
    config = make_config(*CUDA, *overrides)
    prepare_dataset(config.data, workdir, config.name)
    return train(config, workdir)


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    return {row["iter"]: row["train_loss"] for row in rows if "train_loss" in row}


def test_bf16_autocast_is_the_cuda_default_and_learns(
    make_config: MakeConfig, workdir: Path
) -> None:
    result = run(make_config, workdir, "train.max_iters=60", "train.learning_rate=3e-3")
    summary = result.summary
    assert summary["device"].startswith("cuda")
    assert summary["dtype"] == "bfloat16"
    assert summary["bad_steps"] == 0
    seen = losses(result.run_dir)
    assert seen[max(seen)] < seen[min(seen)] - 0.5
    assert summary["peak_memory_mb"] > 0
    assert summary["mfu"] is not None
    assert 0 < summary["mfu"] < 1


def test_float16_trains_with_a_grad_scaler(make_config: MakeConfig, workdir: Path) -> None:
    result = run(make_config, workdir, "train.dtype='float16'", "train.max_iters=40")
    assert result.summary["dtype"] == "float16"
    assert result.summary["bad_steps"] <= 2  # the scaler may skip its first overflowing steps
    assert all(math.isfinite(loss) for loss in losses(result.run_dir).values())


def test_fused_adamw_on_cuda(make_config: MakeConfig) -> None:
    from ml_playground.model.gpt import GPT
    from ml_playground.train.optim import build_optimizer

    config = make_config(*CUDA)
    model = GPT(config.model.model_copy(update={"vocab_size": 64})).cuda()
    optimizer = build_optimizer(model, config.train, torch.device("cuda"))
    assert optimizer.defaults["fused"] is True


def test_compile_with_ema_trains_and_samples_from_the_average(
    make_config: MakeConfig, workdir: Path
) -> None:
    result = run(
        make_config, workdir, "train.compile=true", "train.ema_decay=0.9", "train.max_iters=30"
    )
    checkpoint = result.run_dir / "checkpoints" / "last"
    assert (checkpoint / "ema.safetensors").is_file()
    plain = load_for_inference(checkpoint, "cuda", "model")
    average = load_for_inference(checkpoint, "cuda", "ema")
    first = next(plain.model.parameters())
    assert not torch.equal(first, next(average.model.parameters()))  # a different set of weights
    greedy = SampleConfig(prompt="KING.", max_new_tokens=10, temperature=0.0)
    assert len(sample_texts(average, greedy)[0]) > 0


def test_resume_on_cuda_continues_the_same_run(make_config: MakeConfig, tmp_path: Path) -> None:
    straight = run(make_config, tmp_path / "a", "train.max_iters=40", "train.lr_decay_iters=40")
    run(make_config, tmp_path / "b", "train.max_iters=20", "train.lr_decay_iters=40")
    resumed = run(make_config, tmp_path / "b", "train.max_iters=40", "train.lr_decay_iters=40")
    a, b = losses(straight.run_dir), losses(resumed.run_dir)
    assert sorted(a) == sorted(b)
    # cuBLAS picks kernels per launch, so bf16 runs agree closely rather than bit for bit.
    for iteration in a:
        assert b[iteration] == pytest.approx(a[iteration], abs=2e-2)


def test_lora_fine_tune_in_bf16_lowers_the_loss(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "finetune"))
    from tiny_hf import finetune_config, sample_text, save_tiny_model

    from ml_playground.finetune.run import finetune

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_text(lines=600), "utf-8")
    model_dir = save_tiny_model(tmp_path / "tiny_llama", "llama")
    config = finetune_config(
        model_dir, corpus, *CUDA, "train.dtype='bfloat16'", "train.max_iters=60"
    )
    result = finetune(config, tmp_path / "work").train
    assert result.summary["dtype"] == "bfloat16"
    seen = losses(result.run_dir)
    assert seen[max(seen)] < seen[min(seen)]
