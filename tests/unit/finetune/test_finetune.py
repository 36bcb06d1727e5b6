"""`finetune` and `merge` on tiny models: the loss falls, checkpoints hold the adapter, an
adapter reloads to the same logits, merging changes no logits, resume is exact."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="fine-tuning tests need the `hf` extra")

import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_hf import FAST, corpus_file, finetune_config, tiny_model
from transformers import AutoModelForCausalLM

from ml_playground.config.schema import ExperimentConfig
from ml_playground.data.tokenizers import HuggingFaceTokenizer, load_tokenizer
from ml_playground.errors import CheckpointError, ConfigError, MLPlaygroundError
from ml_playground.finetune.adapter import LoRAAdapter, unwrap
from ml_playground.finetune.lora import quiet_peft
from ml_playground.finetune.run import FinetuneResult, finetune, merge
from ml_playground.generate.service import (
    GenerationSettings,
    LoadedModel,
    generate_text,
    load_for_inference,
)
from ml_playground.train.checkpoint import Checkpoint
from ml_playground.train.loop import train


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory, "gpt2")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_file(tmp_path_factory)


@pytest.fixture
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ExperimentConfig]:
    """`tiny_config(model_dir, "train.max_iters=4", ...)`: tiny_hf_lora on the test corpus."""
    corpus = corpus_file(tmp_path_factory)
    return lambda model_dir, *overrides: finetune_config(model_dir, corpus, *overrides)


PROBE = torch.tensor([[20, 31, 42, 53, 64, 75], [86, 97, 108, 119, 130, 141]])
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0)


@dataclass(frozen=True)
class Run:
    config: ExperimentConfig
    workdir: Path
    result: FinetuneResult

    @property
    def best(self) -> Path:
        return self.result.train.run_dir / "checkpoints" / "best"


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory,
    llama_dir: Path,
    text_file: Path,
) -> Run:
    """20 LoRA steps on the tiny Llama (attention + MLP adapters, lr 1e-2)."""
    from ml_playground.config.loading import resolve_config

    config = resolve_config(
        "tiny_hf_lora",
        [
            f"hf.model='{llama_dir.as_posix()}'",
            f"data.path='{text_file.as_posix()}'",
            "lora.mlp=true",
            "lora.r=16",
            "train.learning_rate=1e-2",
            "train.min_lr=1e-3",
        ],
    )
    workdir = tmp_path_factory.mktemp("work")
    return Run(config, workdir, finetune(config, workdir))


def probe_logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(PROBE.to(loaded.device), PROBE.to(loaded.device))[0]


def test_lora_training_lowers_the_loss(run: Run) -> None:
    metrics = (run.result.train.run_dir / "metrics.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in metrics.splitlines()]
    assert [row["iter"] for row in rows] == [0, 10, 20]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert run.result.train.summary["status"] == "finished"


def test_checkpoint_holds_the_adapter_and_our_state(run: Run) -> None:
    last = run.result.train.run_dir / "checkpoints" / "last"
    names = {path.name for path in last.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= names
    assert {"state.json", "config.toml", "tokenizer"} <= names
    assert "model.safetensors" not in names  # the frozen base is not copied
    adapter = load_file(str(last / "adapter_model.safetensors"))
    assert adapter
    assert all("lora_" in key for key in adapter)
    assert json.loads((last / "state.json").read_text())["iter"] == 20
    tokenizer = load_tokenizer(last / "tokenizer")
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.bos_id == 1  # the tiny Llama's <s>


def test_adapter_save_and_load_reproduce_the_logits(
    run: Run, llama_dir: Path, tmp_path: Path
) -> None:
    """Through our adapter (resume) and through plain PEFT (what other tools do)."""
    adapter = LoRAAdapter(llama_dir, bos_id=1, usable_vocab=300)
    cpu = torch.device("cpu")
    torch.manual_seed(3)
    trained = adapter.build(run.config, cpu).eval()
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)  # B != 0: the adapter changes the output
        expected = trained(PROBE, PROBE)[0]
    adapter.save_weights(trained, tmp_path)

    fresh = adapter.build(run.config, cpu).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(PROBE, PROBE)[0], expected)
    adapter.load_weights(Checkpoint(tmp_path, run.config, {}), fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(PROBE, PROBE)[0], expected)
        base = AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True)
        with quiet_peft():
            plain = PeftModel.from_pretrained(base, str(tmp_path)).eval()
        torch.testing.assert_close(plain(input_ids=PROBE).logits, expected)
    assert unwrap(fresh).peft_config["default"].r == run.config.lora.r


def test_merged_model_has_the_logits_of_base_plus_adapter(run: Run) -> None:
    merged_dir = merge(run.best, run.result.train.run_dir / "merged", "cpu")
    with_adapter = load_for_inference(run.best, "cpu")
    merged = load_for_inference(merged_dir, "cpu")
    torch.testing.assert_close(probe_logits(merged), probe_logits(with_adapter), atol=1e-5, rtol=0)
    # The merged folder is a plain Hugging Face model too.
    plain = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=PROBE).logits, probe_logits(merged))
    assert (merged_dir / "model.safetensors").is_file()
    assert (merged_dir / "tokenizer.json").is_file()
    # Greedy samples are deterministic, and identical after merging.
    first = generate_text(with_adapter, "the king", GREEDY)
    assert generate_text(with_adapter, "the king", GREEDY) == first
    assert generate_text(merged, "the king", GREEDY).text == first.text
    assert first.completion_tokens == GREEDY.max_new_tokens


def test_merge_needs_an_adapter(run: Run, tmp_path: Path) -> None:
    merged = run.result.train.run_dir / "merged"
    if not merged.exists():
        merge(run.best, merged, "cpu")
    with pytest.raises(CheckpointError, match="no LoRA adapter"):
        merge(merged, tmp_path / "again", "cpu")


def test_ema_weights_are_refused_for_a_finetune(run: Run) -> None:
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_for_inference(run.best, "cpu", "ema")


def test_train_refuses_a_finetune_experiment(run: Run) -> None:
    with pytest.raises(MLPlaygroundError, match="ml-playground finetune tiny_hf_lora"):
        train(run.config.model_copy(update={}), run.workdir)


def test_finetune_needs_hf_model(
    tiny_config: Callable[..., ExperimentConfig], llama_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(llama_dir)
    config = config.model_copy(update={"hf": config.hf.model_copy(update={"model": None})})
    with pytest.raises(ConfigError, match=r"has no hf\.model"):
        finetune(config, tmp_path)


def test_resume_is_exact(
    tiny_config: Callable[..., ExperimentConfig], llama_dir: Path, tmp_path: Path
) -> None:
    """4 steps + resume to 8 writes the metrics and adapter of 8 steps straight."""
    # Same schedule in both: decay to step 8 even while the first leg stops at 4.
    overrides = [*FAST, "train.learning_rate=1e-2", "train.lr_decay_iters=8", "lora.dropout=0.1"]
    straight = finetune(
        tiny_config(llama_dir, *overrides, "train.max_iters=8", "train.run_name=a"), tmp_path
    )
    finetune(tiny_config(llama_dir, *overrides, "train.run_name=b"), tmp_path)
    resumed = finetune(
        tiny_config(llama_dir, *overrides, "train.max_iters=8", "train.run_name=b"), tmp_path
    )

    def metrics(result: FinetuneResult) -> list[tuple[float, ...]]:
        lines = (result.train.run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        return [(r["iter"], r["train_loss"], r["val_loss"], r["lr"]) for r in rows]

    assert metrics(resumed) == metrics(straight)
    assert len(metrics(straight)) == 5  # iters 0, 2, 4, 6, 8
    a, b = (
        load_file(str(r.train.run_dir / "checkpoints" / "last" / "adapter_model.safetensors"))
        for r in (straight, resumed)
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_resume_refuses_other_lora_settings(
    tiny_config: Callable[..., ExperimentConfig], llama_dir: Path, tmp_path: Path
) -> None:
    finetune(tiny_config(llama_dir, *FAST, "train.max_iters=2"), tmp_path)
    with pytest.raises(CheckpointError, match=r"different \[lora\] section"):
        finetune(tiny_config(llama_dir, *FAST, "lora.r=4"), tmp_path)


def test_gpt2_fine_tunes_and_samples(
    tiny_config: Callable[..., ExperimentConfig], gpt2_dir: Path, tmp_path: Path
) -> None:
    result = finetune(tiny_config(gpt2_dir, *FAST), tmp_path)
    assert result.train.summary["iters"] == 4
    loaded = load_for_inference(result.train.run_dir / "checkpoints" / "last", "cpu")
    first = generate_text(loaded, "the king", GREEDY)
    assert first == generate_text(loaded, "the king", GREEDY)
    assert first.completion_tokens == GREEDY.max_new_tokens


def test_serve_answers_from_a_finetune(run: Run) -> None:
    """The HTTP API on base + adapter: a greedy completion equals `generate_text`'s."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import asyncio

    from ml_playground.config.schema import ServeConfig
    from ml_playground.serve.app import create_app

    loaded = load_for_inference(run.best, "cpu")
    app = create_app(loaded, ServeConfig(), model_id="tiny_hf_lora")

    async def complete() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"prompt": "the king", "max_tokens": 12, "temperature": 0}
            return await client.post("/v1/completions", json=body)

    response = asyncio.run(complete())
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["text"] == generate_text(loaded, "the king", GREEDY).text
    assert choice["finish_reason"] == "length"


def test_bfloat16_base_with_gradient_checkpointing_trains(
    tiny_config: Callable[..., ExperimentConfig], llama_dir: Path, tmp_path: Path
) -> None:
    """The GPU recipe on the CPU: frozen bfloat16 base, float32 adapters, recomputation."""
    config = tiny_config(
        llama_dir, *FAST, "hf.dtype='bfloat16'", "train.dtype='bfloat16'",
        "hf.gradient_checkpointing=true",
    )  # fmt: skip
    result = finetune(config, tmp_path)
    assert result.train.summary["dtype"] == "bfloat16"
    assert result.train.summary["best_val_loss"] is not None
    loaded = load_for_inference(result.train.run_dir / "checkpoints" / "last", "cpu")
    dtypes = {name: p.dtype for name, p in loaded.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}


def test_block_size_must_fit_the_model_context(
    tiny_config: Callable[..., ExperimentConfig], llama_dir: Path
) -> None:
    config = tiny_config(llama_dir, "model.block_size=128")  # + BOS = 129 > 128 positions
    adapter = LoRAAdapter(llama_dir, bos_id=1, usable_vocab=300)
    with pytest.raises(ConfigError, match=r"lower model\.block_size"):
        adapter.build(config, torch.device("cpu"))
