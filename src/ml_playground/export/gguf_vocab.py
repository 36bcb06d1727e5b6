"""Our tokenizers as llama.cpp's `gpt2` tokenizer model: byte-level tokens, types and merges.

llama.cpp's BPE tokenizer splits text with a pre-tokenizer regex (we name GPT-2's, `gpt-2`),
spells each piece's UTF-8 bytes in GPT-2's byte-level alphabet, starts from one symbol per byte
and applies the merges by rank; each resulting symbol is looked up in the token list.

- ``bpe`` (and an ``hf`` tokenizer that is byte-level BPE with GPT-2's split): the token list
  and merges are taken over unchanged; special added tokens become CONTROL tokens.
- ``char``: each character's token is its UTF-8 bytes in byte-level spelling, and multi-byte
  characters get merges that rebuild them from their bytes (first two bytes, then the third…).
  UTF-8 is self-synchronising, so no merge can ever join bytes of two different characters, and
  the merges reproduce exactly one token per character. A character that has no UTF-8 form (a
  lone surrogate) cannot be written: that is an error.

A llama.cpp BPE vocabulary always has an end-of-generation token (if none is named it takes id
11, which would be an ordinary character of a char vocabulary). A tokenizer without one gets
`<|endoftext|>` appended after the model's vocabulary; `gguf.py` gives it an all-zero embedding
row, so its logit is exactly 0 at every step: greedy decoding never picks it while any real
token scores above 0 (in practice always), and sampling picks it rarely, which ends the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gguf

from ml_playground.data.tokenizers import EOT, CharTokenizer, HuggingFaceTokenizer, Tokenizer
from ml_playground.export.common import ExportError
from ml_playground.export.vocab import byte_level

PRE_TOKENIZER = "gpt-2"
"""llama.cpp's name for GPT-2's split regex (what `tokenizers`' ByteLevel(use_regex=True) uses)."""


@dataclass(frozen=True)
class GGUFVocab:
    """A vocabulary as GGUF stores it; `added` tokens extend the model's embedding rows."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    eos_id: int
    added: int = 0


def gguf_vocab(tokenizer: Tokenizer, n_vocab: int) -> GGUFVocab:
    """Our tokenizer as a `gpt2` GGUF vocabulary for a model with `n_vocab` embedding rows."""
    if isinstance(tokenizer, CharTokenizer):
        tokens, types, merges = _char(tokenizer)
    elif isinstance(tokenizer, HuggingFaceTokenizer):
        tokens, types, merges = _byte_level_bpe(tokenizer, n_vocab)
    else:
        raise ExportError(
            f"GGUF export supports the bpe and char tokenizers (and hf tokenizers that are "
            f"byte-level BPE), not {tokenizer.kind!r}; `ml-playground export hf` writes a "
            f"Hugging Face directory that llama.cpp's convert_hf_to_gguf.py may convert"
        )
    if len(tokens) != n_vocab:
        raise ExportError(
            f"the tokenizer has {len(tokens)} tokens but the model {n_vocab} embedding rows"
        )
    if tokenizer.eot_id is not None:
        return GGUFVocab(tokens, types, merges, tokenizer.eot_id)
    if EOT in tokens:
        raise ExportError(f"the vocabulary has {EOT!r} as an ordinary token; it cannot be appended")
    tokens.append(EOT)
    types.append(int(gguf.TokenType.CONTROL))
    return GGUFVocab(tokens, types, merges, n_vocab, added=1)


def _char(tokenizer: CharTokenizer) -> tuple[list[str], list[int], list[str]]:
    tokens: list[str] = []
    prefixes: set[tuple[int, str, str]] = set()
    for ch in tokenizer.chars:
        try:
            data = ch.encode("utf-8")
        except UnicodeEncodeError:
            raise ExportError(
                f"character U+{ord(ch):04X} of the char vocabulary has no UTF-8 form, so a GGUF "
                "vocabulary cannot hold it; re-prepare the dataset without it"
            ) from None
        spelled = byte_level(data)
        tokens.append(spelled)
        for end in range(2, len(spelled) + 1):
            prefixes.add((end, spelled[: end - 1], spelled[end - 1]))
    # Shorter prefixes first, so every merge's left side has been built before it is needed.
    merges = [f"{left} {right}" for _, left, right in sorted(prefixes)]
    if not merges:
        # An ASCII alphabet needs no merges, but llama.cpp requires the key and GGUF cannot
        # store an empty array: one merge of byte 0xFF, which never occurs in UTF-8, is inert.
        never = byte_level(b"\xff")
        merges = [f"{never} {never}"]
    return tokens, [int(gguf.TokenType.NORMAL)] * len(tokens), merges


def _byte_level_bpe(
    tokenizer: HuggingFaceTokenizer, n_vocab: int
) -> tuple[list[str], list[int], list[str]]:
    spec: dict[str, Any] = json.loads(tokenizer.backend.to_str())
    _require_gpt2_pipeline(tokenizer.kind, spec)
    model = spec["model"]
    by_id: dict[int, tuple[str, int]] = {
        int(i): (token, int(gguf.TokenType.NORMAL)) for token, i in model["vocab"].items()
    }
    for added in spec.get("added_tokens") or []:
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (str(added["content"]), int(kind))
    if by_id and max(by_id) >= n_vocab:
        raise ExportError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} embedding rows"
        )
    # Ids the tokenizer never produces (a model vocabulary padded beyond the tokenizer's)
    # become unused placeholders, as llama.cpp's converter writes them.
    entries = [by_id.get(i, (f"[PAD{i}]", int(gguf.TokenType.UNUSED))) for i in range(n_vocab)]
    merges = []
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if " " in left or " " in right:
            raise ExportError(f"merge {left!r} + {right!r} holds a space; GGUF cannot store it")
        merges.append(f"{left} {right}")
    return [token for token, _ in entries], [kind for _, kind in entries], merges


def _require_gpt2_pipeline(kind: str, spec: dict[str, Any]) -> None:
    """Refuse a `tokenizers` pipeline llama.cpp's `gpt-2` BPE would not reproduce."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    normalizer = spec.get("normalizer")
    problems = []
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("ignore_merges"):
        problems.append(f"model {model.get('type')} (plain byte-level BPE needed)")
    if normalizer is not None:
        problems.append(f"normalizer {normalizer.get('type')}")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex"):
        problems.append(f"pre-tokenizer {pre.get('type')} (GPT-2's ByteLevel split needed)")
    if problems:
        raise ExportError(
            f"this {kind} tokenizer is not GPT-2-style byte-level BPE ({'; '.join(problems)}); "
            "llama.cpp would tokenize differently, so it is not written to GGUF"
        )
