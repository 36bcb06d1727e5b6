"""Tokenizers behind one small protocol, saved as files under a dataset's `tokenizer/` folder.

Six kinds, one interface (`Tokenizer`):

- ``char``: one token per code point of the corpus. The nanoGPT classic; no special tokens.
- ``bpe``: byte-level BPE trained with Hugging Face `tokenizers` (the GPT-2 recipe).
- ``sentencepiece_bpe`` / ``sentencepiece_unigram``: trained with SentencePiece, configured so
  that text comes back byte for byte (identity normalization, byte fallback, kept newlines).
- ``tiktoken``: an existing OpenAI encoding, by name (needs tiktoken's download cache) or from a
  local ``.tiktoken`` ranks file.
- ``hf``: an existing Hugging Face tokenizer (a local ``tokenizer.json`` or a Hub id).

Guarantees every kind keeps (and the tests check):

- ``encode`` takes plain text: a special-token string inside the text (``"<|endoftext|>"``) is
  encoded as ordinary characters, never as the special id. Only the caller inserts ``eot_id``,
  so a corpus cannot forge document boundaries.
- ``decode(encode(s)) == s`` for every string ``s`` (over the trained alphabet for ``char``). The
  exception is ``hf``: an arbitrary Hugging Face tokenizer may normalize or drop characters, which
  we cannot undo. ``decode`` renders the end-of-text id as its text, so a sample shows where a
  document ended.
- ``save(dir)`` writes everything needed into ``dir``, so ``load_tokenizer(dir)`` works offline.
  A checkpoint copies that folder; sampling, export and serving need nothing else.

The on-disk layout (``ml_playground_tokenizer.json`` carries the kind; the legacy char file
carries it inside ``tokenizer.json``)::

    char:            tokenizer.json   {"kind": "char", "chars": [...]}
    bpe, hf:         tokenizer.json   (Hugging Face's own format: model.vocab, model.merges,
                                       added_tokens) + ml_playground_tokenizer.json
                     hf also keeps transformers' tokenizer_config.json, special_tokens_map.json
                     and chat template files, so the folder loads with AutoTokenizer too
    sentencepiece_*: tokenizer.model    (SentencePiece's ModelProto) + ml_playground_tokenizer.json
    tiktoken:        tokenizer.tiktoken (base64 token, rank per line) + ml_playground_tokenizer.json
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import sentencepiece
import tiktoken
import tiktoken.load
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ml_playground.config.schema import DataConfig
from ml_playground.data.images import image_shape, pixel_levels
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
"""Hugging Face's `tokenizer.json` for bpe/hf; the legacy char format for char."""
HF_TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
"""transformers' files beside tokenizer.json (special tokens, chat template) that an `hf`
tokenizer keeps, so its saved folder also loads with `AutoTokenizer.from_pretrained`."""
METADATA_FILE = "ml_playground_tokenizer.json"
"""Our own small file: which kind, which end-of-text token, format version."""
SENTENCEPIECE_FILE = "tokenizer.model"
TIKTOKEN_FILE = "tokenizer.tiktoken"
FORMAT_VERSION = 1

EOT = "<|endoftext|>"
"""The document separator of every trained kind (GPT-2's name for it)."""


class Tokenizer(Protocol):
    """What the rest of the package needs from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding needs (every id `encode` or `eot_id` can give)."""
        ...

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id that separates documents; None if the kind has none (char)."""
        ...

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text → id (never produced by `encode`)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Plain text → ids; special-token strings in `text` are ordinary text."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts, in parallel where the backend can (bpe, tiktoken, sp)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None:
        """Write a self-contained tokenizer into `directory` (created if missing)."""
        ...


# --------------------------------------------------------------------------------------------
# Helpers shared by the kinds
# --------------------------------------------------------------------------------------------


def _write_metadata(directory: Path, kind: str, **fields: object) -> None:
    payload: dict[str, object] = {"kind": kind, "format_version": FORMAT_VERSION, **fields}
    text = json.dumps(payload, ensure_ascii=False, indent=2)
    (directory / METADATA_FILE).write_text(text + "\n", "utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the tokenizer file ({exc})") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    return cast(dict[str, Any], payload)


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            f"the saved tokenizer is incomplete: {path} is missing (run `prepare` again)"
        )
    return path


class _ErrorBox:
    """Carries an exception out of a corpus iterator that a C++/Rust trainer consumes.

    SentencePiece turns a Python exception raised inside its `sentence_iterator` into an opaque
    RuntimeError; the corpus reader's own `DataError` (say, invalid UTF-8 at a byte offset) is the
    message the user needs, so the iterator stores it here and the caller re-raises it.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None

    def guard(self, items: Iterable[str]) -> Iterator[str]:
        try:
            yield from items
        except Exception as exc:  # re-raised by `reraise` right after training
            self.error = exc

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------------------------
# char
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One token per Unicode code point seen in the training corpus (sorted, so ids are stable)."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        codes = np.array([ord(ch) for ch in self.chars], dtype=np.uint32)
        order = np.argsort(codes)
        self._codes = codes[order]
        self._code_ids = order.astype(np.int64)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """Collect the character set; `texts` may be a whole streamed corpus, so keep no text."""
        vocab: set[str] = set()
        for text in texts:
            vocab.update(text)
        return cls(sorted(vocab))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> int | None:
        return None

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    def encode(self, text: str) -> list[int]:
        # Vectorised: code points via UTF-32, ids by binary search in the sorted code points
        # (about 20x faster than a dict lookup per character on a multi-MB document).
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError as exc:
            raise DataError(f"the text holds an unpaired surrogate at index {exc.start}") from None
        if not codes.size:
            return []
        positions = np.searchsorted(self._codes, codes)
        positions = np.minimum(positions, max(len(self._codes) - 1, 0))
        unknown = self._codes[positions] != codes if self._codes.size else np.ones(codes.size, bool)
        if unknown.any():
            char = chr(int(codes[int(np.argmax(unknown))]))
            raise DataError(
                f"character {char!r} is not in this character vocabulary "
                f"({self.vocab_size} symbols seen in the training corpus)"
            )
        ids: list[int] = self._code_ids[positions].tolist()
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        # The pre-metadata format, kept as is so datasets prepared before other kinds existed load.
        directory.mkdir(parents=True, exist_ok=True)
        (directory / METADATA_FILE).unlink(missing_ok=True)  # it would win over tokenizer.json
        payload = {"kind": self.kind, "chars": self.chars}
        (directory / TOKENIZER_FILE).write_text(json.dumps(payload, ensure_ascii=False), "utf-8")


# --------------------------------------------------------------------------------------------
# Hugging Face `tokenizers` (bpe, hf)
# --------------------------------------------------------------------------------------------

_EOT_CANDIDATES = (EOT, "</s>", "<|end_of_text|>", "<eos>")
"""End-of-text spellings of common tokenizers, tried in order when none is declared."""


class HuggingFaceTokenizer:
    """A `tokenizers.Tokenizer` behind our protocol: `bpe` (trained here) and `hf` (brought along).

    `encode_special_tokens` is switched on so `"<|endoftext|>"` in a text is split like any other
    text, and `add_special_tokens=False` keeps a tokenizer's BOS/EOS templates out of `encode`:
    documents are joined by the caller with `eot_id`.
    """

    def __init__(
        self,
        kind: str,
        backend: tokenizers.Tokenizer,
        eot: str | None,
        hf_files: dict[str, str] | None = None,
    ) -> None:
        self._setup(kind, backend, eot, hf_files or {})

    def _setup(
        self, kind: str, backend: tokenizers.Tokenizer, eot: str | None, hf_files: dict[str, str]
    ) -> None:
        self.kind = kind
        self._backend = backend
        self._backend.encode_special_tokens = True
        self._eot = eot
        self._eot_id = None if eot is None else backend.token_to_id(eot)
        if eot is not None and self._eot_id is None:
            raise DataError(f"end-of-text token {eot!r} is not in the tokenizer's vocabulary")
        self._hf_files = hf_files
        self._bos_id = _added_bos(backend, set(self.special_tokens.values()))
        self._chat: Any = None  # a transformers tokenizer, built on first `encode_chat`

    @classmethod
    def train_bpe(cls, vocab_size: int, texts: Iterable[str]) -> HuggingFaceTokenizer:
        """Byte-level BPE, GPT-2 style: 256 byte symbols, merges learned on `texts`, one EOT.

        The byte alphabet is seeded up front (`initial_alphabet`), so every UTF-8 string encodes
        even with bytes the sample never contained; there is no normalizer and no prefix space, so
        decoding returns the exact input. The result can be smaller than `vocab_size` when the
        sample has too few distinct pairs occurring at least twice to merge.
        """
        minimum = len(pre_tokenizers.ByteLevel.alphabet()) + 1
        if vocab_size < minimum:
            raise DataError(
                f"data.vocab_size={vocab_size} is too small for byte-level bpe: it needs 256 byte "
                f"tokens and {EOT}; set data.vocab_size to at least {minimum} (e.g. 4096)"
            )
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls("bpe", backend, EOT)

    @classmethod
    def from_pretrained(cls, name: str) -> HuggingFaceTokenizer:
        """A local `tokenizer.json` (file or folder holding one), else a Hugging Face Hub id."""
        path = Path(name).expanduser()
        if path.is_dir():
            return cls._from_local(path / TOKENIZER_FILE, path)
        if path.is_file():
            return cls._from_local(path, path.parent)
        if name.startswith((".", "/", "~", "\\")) or name.endswith(".json") or path.drive:
            raise DataError(f"data.tokenizer_name={name!r}: no such file or directory")
        return cls._from_hub(name)

    @classmethod
    def _from_local(cls, file: Path, folder: Path) -> HuggingFaceTokenizer:
        if not file.is_file():
            raise DataError(
                f"{folder} has no {TOKENIZER_FILE}; only 'fast' Hugging Face tokenizers are "
                "supported (load it with transformers and call save_pretrained to write one)"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception for a malformed file
            raise DataError(f"{file}: not a Hugging Face tokenizer.json ({exc})") from None
        hf_files = {
            name: (folder / name).read_text("utf-8")
            for name in HF_TOKENIZER_FILES
            if (folder / name).is_file()
        }
        return cls("hf", backend, _find_eot(backend, _declared_eos(folder)), hf_files)

    @classmethod
    def _from_hub(cls, name: str) -> HuggingFaceTokenizer:
        try:
            transformers = importlib.import_module("transformers")
        except ImportError:
            raise DataError(
                f"data.tokenizer_name={name!r} looks like a Hugging Face Hub id, which needs "
                "transformers: pip install 'ml_playground[hf]' (or point it at a local folder "
                "with a tokenizer.json)"
            ) from None
        try:
            loaded = transformers.AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot load Hugging Face tokenizer {name!r}: {exc}") from None
        if not getattr(loaded, "is_fast", False):
            raise DataError(f"{name!r} has no fast (tokenizer.json) tokenizer; it is unsupported")
        # Through transformers' own files, so the chat template and BOS settings come along.
        with tempfile.TemporaryDirectory() as folder:
            loaded.save_pretrained(folder)
            return cls._from_local(Path(folder) / TOKENIZER_FILE, Path(folder))

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (vocab: `get_vocab()`, merges: its JSON model)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self._eot_id

    @property
    def bos_id(self) -> int | None:
        """The begin-of-sequence id this tokenizer puts before every text by default (Gemma,
        Llama), or None (GPT-2, Qwen, our bpe). Models trained that way expect it at inference."""
        return self._bos_id

    @property
    def special_tokens(self) -> dict[str, int]:
        decoder = self._backend.get_added_tokens_decoder()
        return {token.content: i for i, token in sorted(decoder.items()) if token.special}

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped with an `hf` tokenizer, or None."""
        if "chat_template.jinja" in self._hf_files:
            return self._hf_files["chat_template.jinja"]
        template = None
        for name in ("chat_template.json", "tokenizer_config.json"):
            config = json.loads(self._hf_files.get(name, "{}"))
            if template is None and isinstance(config, dict):
                template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> list[int]:
        """`messages` rendered with the chat template, as ids (needs transformers).

        `add_generation_prompt` appends the header that opens the assistant's turn (what a
        prompt looks like at inference; `prepare` uses it to find where a response starts).

        The template's own control tokens (`<start_of_turn>`, `<|im_start|>`) become their ids;
        the same strings inside a message's content stay plain text (transformers'
        `sanitize_control_tokens`), so a corpus cannot forge turns.
        """
        if self.chat_template is None:
            raise DataError("this tokenizer has no chat template; set data.chat_template=false")
        if self._chat is None:
            try:
                transformers = importlib.import_module("transformers")
            except ImportError:
                raise DataError(
                    "chat templates need transformers: pip install 'ml_playground[hf]' (or set "
                    "data.chat_template=false)"
                ) from None
            with tempfile.TemporaryDirectory() as folder:
                self.save(Path(folder))
                self._chat = transformers.PreTrainedTokenizerFast.from_pretrained(
                    folder, local_files_only=True
                )
        # transformers' own refusals are ValueErrors; a template's `raise_exception(...)` ("roles
        # must alternate", "unknown role") is jinja2's TemplateError, which is not one.
        template_error = importlib.import_module("jinja2").TemplateError
        try:
            ids = self._chat.apply_chat_template(
                list(messages),
                tokenize=True,
                sanitize_control_tokens=True,
                return_dict=False,
                add_generation_prompt=add_generation_prompt,
            )
        except (ValueError, template_error) as exc:
            raise DataError(f"the chat template cannot format this pair: {exc}") from None
        return [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking; the Rust side spreads the batch over cores.
        encodings = self._backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(directory / TOKENIZER_FILE), pretty=True)
        for name, text in self._hf_files.items():
            (directory / name).write_text(text, "utf-8")
        _write_metadata(
            directory,
            self.kind,
            tokenizer_file=TOKENIZER_FILE,
            eot=self._eot,
            hf_files=sorted(self._hf_files),
        )

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> HuggingFaceTokenizer:
        file = _require_file(directory / str(metadata.get("tokenizer_file", TOKENIZER_FILE)))
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception for a malformed file
            raise DataError(f"{file}: not a Hugging Face tokenizer.json ({exc})") from None
        eot = metadata.get("eot")
        hf_files = {
            str(name): _require_file(directory / str(name)).read_text("utf-8")
            for name in metadata.get("hf_files", [])
            if str(name) in HF_TOKENIZER_FILES
        }
        return cls(str(metadata["kind"]), backend, eot if isinstance(eot, str) else None, hf_files)

    def __getstate__(self) -> dict[str, Any]:
        # `encode_special_tokens` is not part of tokenizer.json, so it is set again on unpickle.
        return {
            "kind": self.kind,
            "backend": self._backend.to_str(),
            "eot": self._eot,
            "hf_files": self._hf_files,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend = tokenizers.Tokenizer.from_str(state["backend"])
        self._setup(state["kind"], backend, state["eot"], state.get("hf_files", {}))


def _declared_eos(folder: Path) -> str | None:
    """The `eos_token` a `tokenizer_config.json` next to `tokenizer.json` declares, if any."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    eos = _read_json(config_path).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def _added_bos(backend: tokenizers.Tokenizer, special_ids: set[int]) -> int | None:
    """The special id the post-processor puts in front of every text, if it adds one."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    if len(full) > len(plain) and full[1 : 1 + len(plain)] == plain and full[0] in special_ids:
        return int(full[0])
    return None


def _find_eot(backend: tokenizers.Tokenizer, declared: str | None) -> str | None:
    for candidate in (declared, *_EOT_CANDIDATES):
        if candidate is not None and backend.token_to_id(candidate) is not None:
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# SentencePiece (sentencepiece_bpe, sentencepiece_unigram)
# --------------------------------------------------------------------------------------------

_SPACE_SYMBOL = "\u2581"
"""SentencePiece writes a space as '▁', so a real '▁' would decode as a space: see `encode`."""
_MAX_SENTENCE_CHARS = 8192
"""Longer lines are cut for training: SentencePiece silently skips over-long sentences."""
_TOO_HIGH = re.compile(r"value <= (\d+)")
_TOO_SMALL = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")


class SentencePieceTokenizer:
    """A SentencePiece model (BPE or unigram) set up for exact round trips.

    Training settings and why:
    - `normalization_rule_name="identity"`, `remove_extra_whitespaces=False`,
      `add_dummy_prefix=False`: the default NFKC normalization, whitespace squeezing and leading
      '▁' all change the text, so `decode(encode(s))` would not give `s` back.
    - `byte_fallback=True`: a character outside the vocabulary becomes its UTF-8 bytes
      (`<0x..>` pieces) instead of `<unk>`.
    - `"\\n"` is a user-defined symbol: SentencePiece treats input as one sentence per line and
      has no piece for a newline otherwise, so code and paragraphs would lose their line breaks.
      Training sees the corpus line by line (newlines cannot be inside a learned piece anyway).
    - `allow_whitespace_only_pieces=True`: runs of spaces (code indentation) get pieces.
    - `eos_piece="<|endoftext|>"` is the end-of-text id; BOS and PAD are off (the model never
      sees them). The ids are: 0 `<unk>` (required, unused thanks to byte fallback), 1 EOT,
      2 `"\\n"`, 3–258 the bytes, then the learned pieces.
    """

    def __init__(self, kind: str, model_proto: bytes) -> None:
        self._setup(kind, model_proto)

    def _setup(self, kind: str, model_proto: bytes) -> None:
        self.kind = kind
        self._model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self._space_bytes = [
            self._processor.piece_to_id(f"<0x{byte:02X}>") for byte in _SPACE_SYMBOL.encode()
        ]

    @classmethod
    def train(cls, kind: str, vocab_size: int, texts: Iterable[str]) -> SentencePieceTokenizer:
        model_type = {"sentencepiece_bpe": "bpe", "sentencepiece_unigram": "unigram"}[kind]
        box = _ErrorBox()
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=_sentencepiece_lines(box.guard(texts)),
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                user_defined_symbols=["\n"],
                allow_whitespace_only_pieces=True,
                max_sentence_length=4 * _MAX_SENTENCE_CHARS,
                unk_id=0,
                eos_id=1,
                bos_id=-1,
                pad_id=-1,
                eos_piece=EOT,
                minloglevel=2,
            )
        except RuntimeError as exc:
            box.reraise()
            raise _sentencepiece_error(kind, vocab_size, str(exc)) from None
        box.reraise()
        return cls(kind, model.getvalue())

    @property
    def processor(self) -> sentencepiece.SentencePieceProcessor:
        """The loaded model: pieces, scores and piece types for exporters (GGUF, HF)."""
        return self._processor

    @property
    def model_proto(self) -> bytes:
        """The serialized ModelProto, exactly what `save` writes to `tokenizer.model`."""
        return self._model_proto

    @property
    def vocab_size(self) -> int:
        return int(self._processor.vocab_size())

    @property
    def eot_id(self) -> int | None:
        return int(self._processor.eos_id())

    @property
    def special_tokens(self) -> dict[str, int]:
        unk = int(self._processor.unk_id())
        return {self._processor.id_to_piece(unk): unk, EOT: int(self._processor.eos_id())}

    def encode(self, text: str) -> list[int]:
        # A literal '▁' in the text is indistinguishable from an escaped space once inside
        # SentencePiece, so encode around it and spell it as its three byte pieces instead.
        if _SPACE_SYMBOL not in text:
            return cast(list[int], self._processor.encode(text))
        parts = cast(list[list[int]], self._processor.encode(text.split(_SPACE_SYMBOL)))
        ids = parts[0]
        for part in parts[1:]:
            ids += self._space_bytes
            ids += part
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if any(_SPACE_SYMBOL in text for text in texts):
            return [self.encode(text) for text in texts]
        return cast(list[list[int]], self._processor.encode(list(texts)))

    def decode(self, ids: Sequence[int]) -> str:
        # SentencePiece decodes control ids (EOT) to "", which would hide document boundaries.
        eot = self._processor.eos_id()
        if eot not in ids:
            return cast(str, self._processor.decode(list(ids)))
        pieces: list[list[int]] = [[]]
        for i in ids:
            if i == eot:
                pieces.append([])
            else:
                pieces[-1].append(i)
        return EOT.join(cast(list[str], self._processor.decode(pieces)))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SENTENCEPIECE_FILE).write_bytes(self._model_proto)
        _write_metadata(directory, self.kind, model_file=SENTENCEPIECE_FILE, eot=EOT)

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> SentencePieceTokenizer:
        file = _require_file(directory / str(metadata.get("model_file", SENTENCEPIECE_FILE)))
        try:
            return cls(str(metadata["kind"]), file.read_bytes())
        except RuntimeError as exc:
            raise DataError(f"{file}: not a SentencePiece model ({exc})") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_proto": self._model_proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["kind"], state["model_proto"])


def _sentencepiece_lines(texts: Iterable[str]) -> Iterator[str]:
    """Documents → training sentences: lines without their newline, long lines cut in pieces."""
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), _MAX_SENTENCE_CHARS):
                yield line[start : start + _MAX_SENTENCE_CHARS]


def _sentencepiece_error(kind: str, vocab_size: int, message: str) -> DataError:
    """Turn SentencePiece's trainer errors into something a user can act on."""
    detail = message.split("] ", 1)[-1].strip()
    if (match := _TOO_HIGH.search(message)) is not None:
        return DataError(
            f"data.vocab_size={vocab_size} is too large for {kind} on this text: SentencePiece "
            f"can build at most {match.group(1)} pieces from the sample; set "
            f"data.vocab_size={match.group(1)} or less, or train on more text "
            f"(data.tokenizer_sample_bytes)"
        )
    if (match := _TOO_SMALL.search(message)) is not None:
        return DataError(
            f"data.vocab_size={vocab_size} is too small for {kind} on this text: it needs at "
            f"least {match.group(2)} pieces (256 bytes, <unk>, {EOT}, the newline and the "
            "characters that make up 99.95% of the sample); set data.vocab_size to at least "
            f"{match.group(2)}, or use data.tokenizer=bpe (byte-level, needs only 257)"
        )
    if "sentences_.empty()" in message:
        return DataError(f"cannot train {kind}: the corpus sample has no text")
    return DataError(f"SentencePiece could not train {kind}: {detail}")


# --------------------------------------------------------------------------------------------
# tiktoken
# --------------------------------------------------------------------------------------------

_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_KNOWN_TIKTOKEN_FILES: dict[str, tuple[str, dict[str, int]]] = {
    # stem of OpenAI's published ranks file → (pre-tokenizer pattern, special tokens), as in
    # tiktoken_ext.openai_public, so a downloaded copy behaves exactly like get_encoding(name).
    "r50k_base": (_R50K_PATTERN, {EOT: 50256}),
    "p50k_base": (_R50K_PATTERN, {EOT: 50256}),
    "cl100k_base": (
        _CL100K_PATTERN,
        {
            EOT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (_O200K_PATTERN, {EOT: 199999, "<|endofprompt|>": 200018}),
}


class TiktokenTokenizer:
    """An OpenAI tiktoken encoding: a named one, or BPE ranks from a local `.tiktoken` file.

    A ranks file alone does not say how text is pre-split or which special tokens exist. Files
    named like OpenAI's (`cl100k_base.tiktoken`, …) get that encoding's settings; any other file
    gets cl100k's pattern (it handles contractions, digit groups and newlines better than
    GPT-2's) and a single `<|endoftext|>` right after the highest rank.
    """

    kind = "tiktoken"

    def __init__(self, encoding: tiktoken.Encoding, eot: str | None = EOT) -> None:
        self._encoding = encoding
        self._eot = eot if eot is not None and eot in encoding.special_tokens_set else None

    @classmethod
    def from_name_or_file(cls, name: str) -> TiktokenTokenizer:
        path = Path(name).expanduser()
        if path.is_file():
            return cls.from_ranks_file(path)
        if name in tiktoken.list_encoding_names():
            return cls(_get_named_encoding(name))
        if name.endswith(".tiktoken") or "/" in name or "\\" in name:
            raise DataError(f"data.tokenizer_name={name!r}: no such .tiktoken file")
        raise DataError(
            f"data.tokenizer_name={name!r} is neither a tiktoken encoding "
            f"({', '.join(tiktoken.list_encoding_names())}) nor a path to a .tiktoken file"
        )

    @classmethod
    def from_ranks_file(cls, path: Path) -> TiktokenTokenizer:
        ranks = _load_ranks(path)
        stem = path.name.removesuffix(".tiktoken")
        known = _KNOWN_TIKTOKEN_FILES.get(stem)
        if known is not None and max(known[1].values()) >= len(ranks):
            pattern, special = known
        else:
            pattern, special = _CL100K_PATTERN, {EOT: max(ranks.values(), default=-1) + 1}
        encoding = tiktoken.Encoding(
            name=stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
        )
        return cls(encoding)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tiktoken `Encoding` (ranks: `_mergeable_ranks`, pattern: `_pat_str`)."""
        return self._encoding

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int | None:
        return None if self._eot is None else self._encoding.encode_single_token(self._eot)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._encoding._special_tokens)

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._encoding.decode(ids)
        except KeyError:
            # Some encodings leave holes below n_vocab (cl100k: 100261-100275); a model can still
            # sample those ids, and a sample should show U+FFFD there rather than crash.
            pieces = []
            for i in ids:
                try:
                    pieces.append(self._encoding.decode_single_token_bytes(i))
                except KeyError:
                    pieces.append("\ufffd".encode())
            return b"".join(pieces).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        # The ranks are written out even for a named encoding: the download cache tiktoken read
        # them from may be gone (or was never there) where the checkpoint is used.
        directory.mkdir(parents=True, exist_ok=True)
        ranks = sorted(self._encoding._mergeable_ranks.items(), key=lambda item: item[1])
        lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in ranks]
        (directory / TIKTOKEN_FILE).write_text("".join(lines), "ascii")
        _write_metadata(
            directory,
            self.kind,
            name=self._encoding.name,
            ranks_file=TIKTOKEN_FILE,
            pat_str=self._encoding._pat_str,
            special_tokens=self.special_tokens,
            eot=self._eot,
        )

    @classmethod
    def load(cls, directory: Path, metadata: dict[str, Any]) -> TiktokenTokenizer:
        file = _require_file(directory / str(metadata.get("ranks_file", TIKTOKEN_FILE)))
        try:
            encoding = tiktoken.Encoding(
                name=str(metadata["name"]),
                pat_str=str(metadata["pat_str"]),
                mergeable_ranks=_load_ranks(file),
                special_tokens={str(k): int(v) for k, v in metadata["special_tokens"].items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{directory / METADATA_FILE}: incomplete tiktoken entry ({exc})"
            ) from None
        eot = metadata.get("eot")
        return cls(encoding, eot if isinstance(eot, str) else None)


def _load_ranks(path: Path) -> dict[bytes, int]:
    try:
        ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    except (OSError, ValueError, binascii.Error) as exc:
        raise DataError(
            f"{path}: not a .tiktoken ranks file (one '<base64 token> <rank>' per line): {exc}"
        ) from None
    if not ranks:
        raise DataError(f"{path}: the .tiktoken ranks file is empty")
    return ranks


def _get_named_encoding(name: str) -> tiktoken.Encoding:
    """`tiktoken.get_encoding`, whose first use downloads the ranks (then cached on disk)."""
    try:
        return tiktoken.get_encoding(name)
    except (OSError, ValueError, ImportError) as exc:
        # requests' ConnectionError is an OSError; ValueError is a hash mismatch of the download.
        raise DataError(
            f"tiktoken encoding {name!r} is not in tiktoken's cache and downloading it failed "
            f"({type(exc).__name__}); it needs a download that is not possible offline. Copy "
            f"OpenAI's {name}.tiktoken file to this machine and set "
            f"data.tokenizer_name=/path/to/{name}.tiktoken (or set TIKTOKEN_CACHE_DIR to a "
            "folder that holds tiktoken's cache)"
        ) from None


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

_KINDS = ("char", "bpe", "sentencepiece_bpe", "sentencepiece_unigram", "tiktoken", "hf", "pixels")


def train_tokenizer(config: DataConfig, texts: Iterable[str]) -> Tokenizer:
    """Fit (or fetch) the tokenizer `config.tokenizer` names.

    `texts` are documents. For the trained kinds the caller bounds them to about
    `config.tokenizer_sample_bytes`; for char it may be the whole corpus streamed (only the
    character set is kept); tiktoken and hf bring their own vocabulary and ignore it.
    """
    kind = config.tokenizer
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind in ("bpe", "sentencepiece_bpe", "sentencepiece_unigram"):
        if config.vocab_size is None:
            raise DataError(f"data.tokenizer='{kind}' needs data.vocab_size (e.g. 4096)")
        if kind == "bpe":
            return HuggingFaceTokenizer.train_bpe(config.vocab_size, texts)
        return SentencePieceTokenizer.train(kind, config.vocab_size, texts)
    if kind in ("tiktoken", "hf"):
        if not config.tokenizer_name:
            raise DataError(f"data.tokenizer='{kind}' needs data.tokenizer_name")
        if kind == "tiktoken":
            return TiktokenTokenizer.from_name_or_file(config.tokenizer_name)
        return HuggingFaceTokenizer.from_pretrained(config.tokenizer_name)
    if kind == "pixels":  # images: the vocabulary is fixed by the levels, not learned
        return PixelTokenizer(pixel_levels(config), *image_shape(config.corpus))
    raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(_KINDS)}")


def uses_chat_template(config: DataConfig, tokenizer: Tokenizer) -> bool:
    """Whether prompt/response pairs are formatted by the tokenizer's chat template.

    `data.chat_template` unset: when the tokenizer has one; true: it must have one; false: never
    (pairs are joined as plain text).
    """
    if config.prompt_field is None or config.chat_template is False:
        return False
    has_template = (
        isinstance(tokenizer, HuggingFaceTokenizer) and tokenizer.chat_template is not None
    )
    if config.chat_template and not has_template:
        raise DataError(
            "data.chat_template=true but the tokenizer has no chat template; use a model whose "
            "tokenizer ships one (an instruction-tuned model) or set data.chat_template=false"
        )
    return has_template


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load whatever `save` wrote into `directory`, with no network access."""
    metadata_path = directory / METADATA_FILE
    if metadata_path.is_file():
        metadata = _read_json(metadata_path)
        kind = metadata.get("kind")
        if kind in ("bpe", "hf"):
            return HuggingFaceTokenizer.load(directory, metadata)
        if kind in ("sentencepiece_bpe", "sentencepiece_unigram"):
            return SentencePieceTokenizer.load(directory, metadata)
        if kind == "tiktoken":
            return TiktokenTokenizer.load(directory, metadata)
        if kind == "pixels":
            return PixelTokenizer.load(directory, metadata)
        raise DataError(
            f"{metadata_path}: unknown tokenizer kind {kind!r} (known: {', '.join(_KINDS)}); "
            "was it written by a newer ml_playground?"
        )
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer at {directory} (run `prepare` to create one)")
    payload = _read_json(path)
    if payload.get("kind") == "char":
        chars = payload.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise DataError(f"{path}: 'chars' must be a list of characters")
        try:
            return CharTokenizer(chars)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
    if "kind" in payload:
        raise DataError(
            f"{path}: unknown tokenizer kind {payload.get('kind')!r} (known: {', '.join(_KINDS)})"
        )
    if "model" in payload:
        # A bare Hugging Face tokenizer.json dropped into the folder: usable as kind 'hf'.
        return HuggingFaceTokenizer._from_local(path, directory)
    raise DataError(f"{path}: not a tokenizer file (no 'kind' and no Hugging Face 'model')")
