"""`export gguf`: read the file back with gguf.GGUFReader and check it is what llama.cpp reads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from export_fixtures import BLOCK_SIZE, EXTRA_TEXT, make_checkpoint
from tokenizers import pre_tokenizers

from ml_playground.data.tokenizers import CharTokenizer
from ml_playground.export.common import ExportError
from ml_playground.export.gguf import export_gguf
from ml_playground.export.gguf_vocab import gguf_vocab
from ml_playground.generate.service import LoadedModel, load_for_inference

LAYER_TENSORS = [
    "attn_norm.weight",
    "attn_norm.bias",
    "attn_qkv.weight",
    "attn_qkv.bias",
    "attn_output.weight",
    "attn_output.bias",
    "ffn_norm.weight",
    "ffn_norm.bias",
    "ffn_up.weight",
    "ffn_up.bias",
    "ffn_down.weight",
    "ffn_down.bias",
]
"""llama.cpp's gpt2 tensors per block (src/models/gpt2.cpp loads exactly these)."""


def export(
    checkpoint: Path, out: Path, dtype: str = "f32", force: bool = False
) -> tuple[LoadedModel, list[str]]:
    loaded = load_for_inference(checkpoint, "cpu")
    report = export_gguf(loaded, out, "tiny", dtype, loaded.checkpoint.config.sample, force)
    assert report.files == [(out, out.stat().st_size)]
    return loaded, report.checks + report.notes


def field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def llama_cpp_tokenize(text: str, tokens: list[str], merges: list[str]) -> list[int]:
    """llama.cpp's `gpt2` BPE, reduced to its rules: GPT-2 split, bytes, lowest-rank merge."""
    ranks = {tuple(merge.split(" ", 1)): rank for rank, merge in enumerate(merges)}
    ids = {token: i for i, token in enumerate(tokens)}
    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    out = []
    for piece, _ in split.pre_tokenize_str(text):  # pieces in byte-level spelling
        symbols = list(piece)
        while True:
            pairs = [
                (ranks[pair], i)
                for i, pair in enumerate(itertools.pairwise(symbols))
                if pair in ranks
            ]
            if not pairs:
                break
            _, i = min(pairs)
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        out += [ids[symbol] for symbol in symbols]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_tensors_and_metadata_are_llama_cpp_gpt2(tmp_path: Path, bias: bool) -> None:
    loaded, checks = export(
        make_checkpoint(tmp_path / "ckpt", "bpe", bias=bias), tmp_path / "m.gguf"
    )
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    model = loaded.model
    expected = [
        "token_embd.weight",
        "position_embd.weight",
        "output_norm.weight",
        "output_norm.bias",
    ]
    expected += [f"blk.{i}.{name}" for i in range(2) for name in LAYER_TENSORS]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(expected)  # tied head: no output.weight
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    # Values and layout: llama.cpp wants (out, in) rows, i.e. nn.Linear's own weight.
    qkv = np.asarray(tensors["blk.1.attn_qkv.weight"].data)
    assert np.array_equal(qkv, model.h[1].attn.c_attn.weight.detach().numpy())
    down = np.asarray(tensors["blk.0.ffn_down.weight"].data)
    assert np.array_equal(down, model.h[0].mlp.c_proj.weight.detach().numpy())
    ln_bias = np.asarray(tensors["output_norm.bias"].data)
    if bias:
        assert np.array_equal(ln_bias, model.ln_f.bias.detach().numpy())
    else:
        assert not ln_bias.any()
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "gpt2.context_length") == BLOCK_SIZE
    assert field(reader, "gpt2.embedding_length") == 64
    assert field(reader, "gpt2.feed_forward_length") == 256
    assert field(reader, "gpt2.block_count") == 2
    assert field(reader, "gpt2.attention.head_count") == 2
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert field(reader, "general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    assert any("read back with GGUFReader" in check for check in checks)


def test_bpe_vocabulary_and_merges_reproduce_our_tokenization(tmp_path: Path) -> None:
    loaded, _ = export(make_checkpoint(tmp_path / "ckpt", "bpe"), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    assert isinstance(tokens, list)
    assert isinstance(merges, list)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokenizer_json = json.loads((loaded.checkpoint.tokenizer_dir / "tokenizer.json").read_text())
    assert len(merges) == len(tokenizer_json["model"]["merges"]) > 0
    eot = loaded.tokenizer.eot_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == eot
    assert tokens[eot] == "<|endoftext|>"
    types = field(reader, "tokenizer.ggml.token_type")
    assert isinstance(types, list)
    assert types[eot] == gguf.TokenType.CONTROL
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    text = "KING.\nWhat say you, my lord?  Café 日本 😀\n\n"
    assert llama_cpp_tokenize(text, tokens, merges) == loaded.tokenizer.encode(text)


def test_char_vocabulary_rebuilds_multibyte_characters_and_gets_an_end_token(
    tmp_path: Path,
) -> None:
    loaded, notes = export(make_checkpoint(tmp_path / "ckpt", "char"), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    assert isinstance(tokens, list)
    assert isinstance(merges, list)
    vocab = loaded.tokenizer.vocab_size
    assert len(tokens) == vocab + 1
    assert tokens[vocab] == "<|endoftext|>"
    assert field(reader, "tokenizer.ggml.eos_token_id") == vocab
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert np.asarray(embedding.data).shape == (vocab + 1, 64)
    assert not np.asarray(embedding.data)[vocab].any()  # logit exactly 0, never a likely pick
    assert any("no end-of-text token" in note for note in notes)
    text = "KING.\nGood night, my lord! " + EXTRA_TEXT
    assert llama_cpp_tokenize(text, tokens, merges) == loaded.tokenizer.encode(text)


def test_ascii_char_vocabulary_still_has_the_merges_key(tmp_path: Path) -> None:
    vocab = gguf_vocab(CharTokenizer(list("\n !,.KINGabc")), 12)
    assert len(vocab.merges) == 1  # GGUF cannot store an empty array; llama.cpp needs the key
    assert llama_cpp_tokenize("KING abc.\n", vocab.tokens, vocab.merges) == CharTokenizer(
        list("\n !,.KINGabc")
    ).encode("KING abc.\n")


def test_characters_without_utf8_are_a_clear_error() -> None:
    with pytest.raises(ExportError, match=r"U\+D800"):
        gguf_vocab(CharTokenizer(["a", "\ud800"]), 2)


def test_sentencepiece_is_refused_with_a_way_forward(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", "sentencepiece_bpe")
    with pytest.raises(ExportError, match="export hf"):
        export(checkpoint, tmp_path / "m.gguf")
    assert list(tmp_path.glob("*.gguf")) == []
    assert list(tmp_path.glob(".*partial")) == []


@pytest.mark.parametrize(
    ("dtype", "n_embd", "matrix_type", "tolerance"),
    [
        ("f16", 64, gguf.GGMLQuantizationType.F16, 1e-3),
        ("q8_0", 64, gguf.GGMLQuantizationType.Q8_0, 1e-2),
        ("q8_0", 48, gguf.GGMLQuantizationType.F16, 1e-3),  # rows of 48: no q8_0 blocks
    ],
)
def test_dtypes(
    tmp_path: Path,
    dtype: str,
    n_embd: int,
    matrix_type: gguf.GGMLQuantizationType,
    tolerance: float,
) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", "bpe", n_embd=n_embd)
    loaded, notes = export(checkpoint, tmp_path / "m.gguf", dtype)
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == matrix_type
    assert types["token_embd.weight"] == matrix_type
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_qkv.bias"] == gguf.GGMLQuantizationType.F32
    up = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    values = gguf.quants.dequantize(up.data, up.tensor_type).reshape(4 * n_embd, n_embd)
    original = loaded.model.h[1].mlp.c_fc.weight.detach().numpy()
    assert np.abs(values - original).max() <= tolerance * np.abs(original).max()
    assert (matrix_type == gguf.GGMLQuantizationType.F16 and dtype == "q8_0") == any(
        "not q8_0" in note for note in notes
    )


def test_sizes_shrink_with_the_dtype(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", "bpe")
    sizes = {}
    for dtype in ("f32", "f16", "q8_0"):
        export(checkpoint, tmp_path / f"{dtype}.gguf", dtype)
        sizes[dtype] = (tmp_path / f"{dtype}.gguf").stat().st_size
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt", "bpe")
    target = tmp_path / "m.gguf"
    target.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="--force"):
        export(checkpoint, target)
    assert target.read_bytes() == b"not a model"
    export(checkpoint, target, force=True)
    assert gguf.GGUFReader(str(target)).fields["general.architecture"].contents() == "gpt2"
