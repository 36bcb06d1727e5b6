"""`export gguf`: our GPT as a GGUF file for llama.cpp (and Ollama), architecture `gpt2`.

Tensor names and metadata are the ones llama.cpp's own `convert_hf_to_gguf.py` writes for a
Hugging Face GPT-2 (names come from the `gguf` package's tables, not typed here):

    token_embd, position_embd, output_norm.{weight,bias}           (the head is tied: no output)
    blk.N.attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down   (.weight and .bias)
    gpt2.{block_count, context_length, embedding_length, feed_forward_length, head_count,
          attention.layer_norm_epsilon}, general.{name, file_type, quantization_version}
    tokenizer.ggml.{model=gpt2, pre=gpt-2, tokens, token_type, merges, bos/eos_token_id}

Our `nn.Linear` weights are already (out, in), which is what llama.cpp expects (the converter
transposes Hugging Face's Conv1D to get there). `--dtype` follows the converter's rules: 1-D
tensors and `position_embd` stay float32; the other matrices are f32, f16 or q8_0 (q8_0 needs
rows that are a multiple of 32 values; narrower matrices fall back to f16). `[sample]` settings
are recorded as `general.sampling.*` defaults.

After writing, the file is read back with `gguf.GGUFReader`: every tensor is dequantized and
compared with the checkpoint, and the metadata and vocabulary are checked.

llama.cpp computes GELU with the tanh approximation (from an f16 lookup table) where we use
the exact erf form; logits differ by about 1e-3, which leaves greedy tokens unchanged except at
near-ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import torch

from ml_playground.config.schema import SampleConfig
from ml_playground.export.common import (
    ExportError,
    ExportReport,
    check_file_destination,
    staged_file,
)
from ml_playground.export.gguf_vocab import PRE_TOKENIZER, GGUFVocab, gguf_vocab
from ml_playground.export.source import LAYER_NORM_EPS, gpt2_tensors
from ml_playground.generate.service import LoadedModel
from ml_playground.model.gpt import GPT

GGUFDtype = Literal["f32", "f16", "q8_0"]
ARCH = "gpt2"
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
QUANT_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
TOLERANCE: dict[gguf.GGMLQuantizationType, float] = {
    # Largest |written - original| after dequantizing, relative to the tensor's largest value.
    gguf.GGMLQuantizationType.F32: 0.0,
    gguf.GGMLQuantizationType.F16: 1e-3,
    gguf.GGMLQuantizationType.Q8_0: 1.0 / 127,
}
_OURS_TO_GGUF = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    data: np.ndarray  # float32, the values the file should hold
    qtype: gguf.GGMLQuantizationType


def gguf_name(ours: str) -> str:
    """Our tensor name (`h.3.attn.c_attn.weight`) → llama.cpp's (`blk.3.attn_qkv.weight`)."""
    module, suffix = ours.rsplit(".", 1)
    if module == "wte":
        return f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD]}.{suffix}"
    if module == "wpe":
        return f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]}.{suffix}"
    if module == "ln_f":
        return f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT_NORM]}.{suffix}"
    _, layer, rest = module.split(".", 2)
    return f"{gguf.TENSOR_NAMES[_OURS_TO_GGUF[rest]].format(bid=int(layer))}.{suffix}"


def gguf_tensors(model: GPT, dtype: GGUFDtype, added_tokens: int = 0) -> list[GGUFTensor]:
    """The tensors to write, with the type each gets; `added_tokens` zero rows extend the vocab."""
    tensors = []
    for ours, tensor in gpt2_tensors(model).items():
        if ours == "wte.weight" and added_tokens:
            tensor = torch.cat([tensor, tensor.new_zeros(added_tokens, tensor.shape[1])])
        data = tensor.numpy().astype(np.float32)
        name = gguf_name(ours)
        qtype = QUANT_TYPES[dtype]
        if data.ndim == 1 or ours == "wpe.weight":
            qtype = gguf.GGMLQuantizationType.F32  # as llama.cpp's converter (and its kernels) want
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16
        tensors.append(GGUFTensor(name, data, qtype))
    return tensors


def write_gguf(
    path: Path,
    loaded: LoadedModel,
    name: str,
    dtype: GGUFDtype,
    sample: SampleConfig | None = None,
) -> tuple[GGUFVocab, list[GGUFTensor]]:
    """Write the GGUF file at `path` (no checks, no staging: `export_gguf` does those)."""
    model, cfg = loaded.model, loaded.model.config
    vocab = gguf_vocab(loaded.tokenizer, model.vocab_size)
    tensors = gguf_tensors(model, dtype, vocab.added)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(cfg.n_layer)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(4 * cfg.n_embd)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.eos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if sample is not None:
        writer.add_sampling_temp(sample.temperature)
        if sample.top_k:
            writer.add_sampling_top_k(sample.top_k)
        if sample.top_p is not None:
            writer.add_sampling_top_p(sample.top_p)
        writer.add_sampling_penalty_repeat(sample.repetition_penalty)
    for tensor in tensors:
        data = gguf.quants.quantize(tensor.data, tensor.qtype)
        writer.add_tensor(tensor.name, data, raw_dtype=tensor.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab, tensors


def verify_gguf(path: Path, model: GPT, vocab: GGUFVocab, tensors: list[GGUFTensor]) -> list[str]:
    """Read `path` back and check metadata, vocabulary and every tensor's values."""
    reader = gguf.GGUFReader(str(path))
    cfg = model.config

    def field(key: str) -> object:
        if key not in reader.fields:
            raise ExportError(f"{path}: {key} is missing after writing; this is a bug in export")
        return reader.fields[key].contents()

    expected: dict[str, object] = {
        "general.architecture": ARCH,
        f"{ARCH}.block_count": cfg.n_layer,
        f"{ARCH}.context_length": cfg.block_size,
        f"{ARCH}.embedding_length": cfg.n_embd,
        f"{ARCH}.feed_forward_length": 4 * cfg.n_embd,
        f"{ARCH}.attention.head_count": cfg.n_head,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": PRE_TOKENIZER,
        "tokenizer.ggml.eos_token_id": vocab.eos_id,
    }
    for key, value in expected.items():
        if field(key) != value:
            raise ExportError(f"{path}: {key} reads back as {field(key)!r}, not {value!r}")
    if field("tokenizer.ggml.tokens") != vocab.tokens:
        raise ExportError(f"{path}: the token list does not read back as written")
    if field("tokenizer.ggml.merges") != vocab.merges:
        raise ExportError(f"{path}: the merges do not read back as written")
    written = {tensor.name: tensor for tensor in reader.tensors}
    if sorted(written) != sorted(t.name for t in tensors):
        raise ExportError(f"{path}: tensors {sorted(written)} do not match what was written")
    worst: dict[str, float] = {}
    for tensor in tensors:
        back = written[tensor.name]
        if back.tensor_type != tensor.qtype:
            raise ExportError(f"{path}: {tensor.name} reads back as {back.tensor_type.name}")
        values = gguf.quants.dequantize(back.data, back.tensor_type).reshape(tensor.data.shape)
        scale = max(float(np.abs(tensor.data).max()), 1e-12)
        error = float(np.abs(values.astype(np.float32) - tensor.data).max()) / scale
        if error > TOLERANCE[tensor.qtype]:
            raise ExportError(
                f"{path}: {tensor.name} reads back {error:.2e} (relative) away from the "
                f"checkpoint in {tensor.qtype.name}; this is a bug in export"
            )
        kind = tensor.qtype.name
        worst[kind] = max(worst.get(kind, 0.0), error)
    summary = ", ".join(f"{kind} ≤ {error:.1e}" for kind, error in sorted(worst.items()))
    return [
        f"metadata: gpt2, {cfg.n_layer} layers, {cfg.n_embd} wide, context {cfg.block_size}",
        f"vocabulary: {len(vocab.tokens)} tokens, {len(vocab.merges)} merges, "
        f"eos {vocab.eos_id}"
        + (f" ({vocab.added} added with a zero embedding)" if vocab.added else ""),
        f"tensors: {len(tensors)} read back with GGUFReader; max relative error {summary}",
    ]


def gguf_notes(vocab: GGUFVocab, tensors: list[GGUFTensor], dtype: GGUFDtype) -> list[str]:
    """What a user should know about a written file that differs from what they asked for."""
    notes = []
    kept = [t for t in tensors if dtype == "q8_0" and t.qtype == gguf.GGMLQuantizationType.F16]
    if kept:
        notes.append(f"{len(kept)} matrices are f16, not q8_0: rows not a multiple of 32 values")
    if vocab.added:
        notes.append(
            "the tokenizer has no end-of-text token; <|endoftext|> was appended (zero "
            "embedding, logit 0) so llama.cpp has one to stop at"
        )
    return notes


def default_file_name(name: str, dtype: str) -> str:
    return f"{name}-{dtype}.gguf"


def export_gguf(
    loaded: LoadedModel,
    target: Path,
    name: str,
    dtype: GGUFDtype,
    sample: SampleConfig | None,
    force: bool,
) -> ExportReport:
    """Write, read back and verify a GGUF file, then move it to `target`."""
    check_file_destination(target, force)
    report = ExportReport(target)
    with staged_file(target) as staging:
        vocab, tensors = write_gguf(staging, loaded, name, dtype, sample)
        report.checks += verify_gguf(staging, loaded.model, vocab, tensors)
    report.notes += gguf_notes(vocab, tensors, dtype)
    report.files = [(target, target.stat().st_size)]
    return report
