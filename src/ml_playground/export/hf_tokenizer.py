"""Our tokenizers as Hugging Face fast tokenizers (`tokenizer.json` + `tokenizer_config.json`).

`AutoTokenizer.from_pretrained(dir)` then loads them offline. Each kind maps onto the
`tokenizers` library like this:

- ``bpe`` / ``hf``: already a `tokenizers` JSON; it is wrapped as is.
- ``char``: a `WordLevel` model over the characters, a pre-tokenizer that isolates every code
  point and a `Fuse` decoder (concatenation, no spaces added). A character outside the alphabet
  raises in `encode` (there is no unknown token), as our own char tokenizer does.
- ``sentencepiece_unigram``: a `Unigram` model with the pieces' scores and byte fallback;
  ``sentencepiece_bpe``: a `BPE` model whose merges `transformers` recovers from the pieces.
  Spaces become '▁' (no prefix is added: our SentencePiece models are trained without one).
- ``tiktoken``: byte-level BPE with the encoding's split pattern and the merges its ranks imply,
  only when the special tokens follow the ranks without gaps (ids must not move).

Two differences are by design of `transformers`, not bugs: a special-token string inside a text
(`"<|endoftext|>"`) becomes the special id there (ours encodes it as plain text), and a literal
'▁' in a SentencePiece text reads as a space there (ours spells it with byte pieces).

Nothing here is trusted blindly: `hf.py` encodes a probe text with the saved tokenizer and
compares the ids with ours before the export counts as done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ml_playground.data.tokenizers import (
    CharTokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
)
from ml_playground.export.common import ExportError
from ml_playground.export.vocab import byte_level, implied_merges

_SPACE = "\u2581"


def to_tokenizers(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` that encodes text as `tokenizer` does (checked by the caller)."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        return tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    if isinstance(tokenizer, CharTokenizer):
        return _char(tokenizer)
    if isinstance(tokenizer, SentencePieceTokenizer):
        return _sentencepiece(tokenizer)
    if isinstance(tokenizer, TiktokenTokenizer):
        return _tiktoken(tokenizer)
    raise ExportError(f"no Hugging Face conversion for tokenizer kind {tokenizer.kind!r}")


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` for `AutoTokenizer` into `directory`."""
    import transformers

    special: dict[str, Any] = {}
    if tokenizer.eot_id is not None:
        eot = next(text for text, i in tokenizer.special_tokens.items() if i == tokenizer.eot_id)
        # GPT-2's convention: one end-of-text token serves as bos, eos and unk.
        special = {"bos_token": eot, "eos_token": eot}
        if not isinstance(tokenizer, SentencePieceTokenizer):
            special["unk_token"] = eot
        else:
            special["unk_token"] = tokenizer.processor.id_to_piece(tokenizer.processor.unk_id())
    fast = cast(Any, transformers).PreTrainedTokenizerFast(
        tokenizer_object=to_tokenizers(tokenizer),
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        **special,
    )
    fast.save_pretrained(str(directory))
    # transformers 5 writes its new generic class name, which transformers 4 cannot resolve;
    # `PreTrainedTokenizerFast` means the same (load tokenizer.json as is) in both.
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text("utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")


def probe_text(tokenizer: Tokenizer, prompt: str) -> str:
    """Text to compare two encoders on: every ordinary token once, plus the sample prompt."""
    specials = set(tokenizer.special_tokens.values())
    ordinary = [i for i in range(tokenizer.vocab_size) if i not in specials]
    pieces = [
        tokenizer.decode(ordinary[start : start + 16]) for start in range(0, len(ordinary), 16)
    ]
    text = " ".join(pieces)
    if isinstance(tokenizer, CharTokenizer):  # only its own alphabet is encodable
        known = set(tokenizer.chars)
        return "".join(ch for ch in prompt + text if ch in known)
    return prompt + "\nHello, world! ÄÖÜ ß — 1234 \t tabs  and   spaces\n\n" + text


# --- conversions ---------------------------------------------------------------------------


def _char(tokenizer: CharTokenizer) -> tokenizers.Tokenizer:
    vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
    # WordLevel insists on an unknown token name; it is deliberately not in the vocabulary, so an
    # unknown character fails loudly instead of being mapped to some real character.
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def _sentencepiece(tokenizer: SentencePieceTokenizer) -> tokenizers.Tokenizer:
    proto = cast(Any, sentencepiece_model_pb2).ModelProto()  # generated protobuf: no stubs
    proto.ParseFromString(tokenizer.model_proto)
    kinds = proto.SentencePiece.Type
    pieces = [(item.piece, float(item.score), int(item.type)) for item in proto.pieces]
    unk_id = next(i for i, (_, _, kind) in enumerate(pieces) if kind == kinds.UNKNOWN)
    model: models.Model
    if tokenizer.kind == "sentencepiece_unigram":
        scores = [(piece, score) for piece, score, _ in pieces]
        model = models.Unigram(scores, unk_id, byte_fallback=True)
    else:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        model = models.BPE(
            vocab,
            implied_merges(vocab),
            unk_token=pieces[unk_id][0],
            fuse_unk=True,
            byte_fallback=True,
        )
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.Replace(" ", _SPACE)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # User-defined pieces (our "\n") are matched before segmentation, as SentencePiece does;
    # control pieces (<unk>, end-of-text) are special tokens, never produced from text.
    added = []
    for piece, _, kind in pieces:
        if kind in (kinds.CONTROL, kinds.UNKNOWN):
            added.append(AddedToken(piece, special=True, normalized=False))
        elif kind == kinds.USER_DEFINED:
            added.append(AddedToken(piece, special=False, normalized=False))
    backend.add_tokens(added)
    return backend


def _tiktoken(tokenizer: TiktokenTokenizer) -> tokenizers.Tokenizer:
    encoding = tokenizer.encoding
    ranks = encoding._mergeable_ranks
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    if sorted(ranks.values()) != list(range(len(ranks))) or [i for _, i in specials] != list(
        range(len(ranks), len(ranks) + len(specials))
    ):
        raise ExportError(
            f"tiktoken encoding {encoding.name!r} has gaps between its token ids, which a Hugging "
            "Face BPE vocabulary cannot hold"
        )
    vocab = {byte_level(token): rank for token, rank in ranks.items()}
    backend = tokenizers.Tokenizer(models.BPE(vocab, implied_merges(vocab), fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(encoding._pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(text, special=True) for text, _ in specials])
    return backend
