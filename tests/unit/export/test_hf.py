"""`export hf`: transformers loads the directory offline and computes our logits."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from export_fixtures import BLOCK_SIZE, EXTRA_TEXT, make_checkpoint

from ml_playground.config.schema import ModelConfig
from ml_playground.data.tokenizers import TiktokenTokenizer
from ml_playground.export.common import ExportError
from ml_playground.export.hf import export_hf
from ml_playground.generate.service import LoadedModel, load_for_inference

transformers = pytest.importorskip("transformers")


def export(checkpoint: Path, out: Path, force: bool = False) -> tuple[LoadedModel, list[str]]:
    loaded = load_for_inference(checkpoint, "cpu")
    sample = loaded.checkpoint.config.sample
    report = export_hf(loaded, out, sample, "tiny", force=force)
    return loaded, report.checks + report.notes


@pytest.mark.parametrize(("kind", "bias"), [("char", True), ("bpe", False)])
def test_transformers_reproduces_our_logits_and_tokens(
    tmp_path: Path, kind: str, bias: bool
) -> None:
    loaded, checks = export(make_checkpoint(tmp_path / "ckpt", kind, bias=bias), tmp_path / "hf")
    assert any(check.startswith("tokenizer:") for check in checks), checks
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "hf"), local_files_only=True
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "KING.\nWhat say you, my lord? " + (EXTRA_TEXT if kind == "char" else "Ünïcode ☃")
    ids = loaded.tokenizer.encode(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    idx = torch.tensor([ids[:BLOCK_SIZE]])
    with torch.no_grad():
        ours, _ = loaded.model(idx, idx)
        theirs = model(idx).logits
    assert theirs.dtype == torch.float32
    assert (ours - theirs).abs().max() < 1e-4
    assert ours.std() > 0.1  # the comparison is not between two near-constant outputs
    # Greedy generation agrees token for token.
    prompt = idx[:, :8]
    ours_greedy = loaded.model.generate(prompt, 12, temperature=0.0)
    theirs_greedy = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert theirs_greedy.tolist() == ours_greedy.tolist()


def test_config_and_generation_config_say_what_transformers_needs(tmp_path: Path) -> None:
    sample = {"prompt": "KING.", "temperature": 0.7, "top_k": 40, "top_p": 0.9}
    export(make_checkpoint(tmp_path / "ckpt", "bpe", sample=sample), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] == BLOCK_SIZE
    assert config["activation_function"] == "gelu"
    assert config["eos_token_id"] == config["bos_token_id"] == 0  # <|endoftext|>, not 50256
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["do_sample"] is True
    assert (generation["temperature"], generation["top_k"], generation["top_p"]) == (0.7, 40, 0.9)
    tokenizer_config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["eos_token"] == "<|endoftext|>"


@pytest.mark.parametrize("kind", ["sentencepiece_unigram", "sentencepiece_bpe"])
def test_sentencepiece_tokenizers_load_with_autotokenizer(tmp_path: Path, kind: str) -> None:
    loaded, checks = export(make_checkpoint(tmp_path / "ckpt", kind, bias=False), tmp_path / "hf")
    assert "tokenizer: AutoTokenizer encodes the probe text as ours" in checks
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "KING.\nGood night,  my lord!\n\nCafé"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(text)


def test_vocab_padding_rows_are_not_exported(tmp_path: Path) -> None:
    if "vocab_multiple" not in ModelConfig.model_fields:
        pytest.skip("this version of the model has no vocab_multiple option")
    checkpoint = make_checkpoint(tmp_path / "ckpt", "char", vocab_multiple=64)
    loaded, _ = export(checkpoint, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vocab_size"] == loaded.tokenizer.vocab_size < 64


def test_refuses_to_overwrite_without_force_and_replaces_with_it(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    export(checkpoint, tmp_path / "hf")
    (tmp_path / "hf" / "stale.txt").write_text("from an earlier export")
    with pytest.raises(ExportError, match="--force"):
        export(checkpoint, tmp_path / "hf")
    assert (tmp_path / "hf" / "stale.txt").exists()
    export(checkpoint, tmp_path / "hf", force=True)
    assert not (tmp_path / "hf" / "stale.txt").exists()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_never_replaces_a_directory_that_is_not_an_export(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="does not look like an earlier export"):
        export(make_checkpoint(tmp_path / "ckpt"), precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_generation_config_for_greedy_sampling(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", sample={"prompt": "K", "temperature": 0})
    export(checkpoint, tmp_path / "hf")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["do_sample"] is False
    assert "temperature" not in generation


def test_tiktoken_ranks_become_a_byte_level_bpe_autotokenizer(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"KI", b"NG", b"KING", b" t", b"he", b" the", b"lo", b"rd", b"lord"):
        ranks.setdefault(token, len(ranks))
    lines = [f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()]
    (tmp_path / "mine.tiktoken").write_text("".join(lines))
    tokenizer = TiktokenTokenizer.from_ranks_file(tmp_path / "mine.tiktoken")
    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer=tokenizer, bias=False)
    loaded, checks = export(checkpoint, tmp_path / "hf")
    assert "tokenizer: AutoTokenizer encodes the probe text as ours" in checks
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "KING. the lord, the KING!\n"
    ids = loaded.tokenizer.encode(text)
    assert ranks[b"KING"] in ids
    assert ranks[b"lord"] in ids
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
