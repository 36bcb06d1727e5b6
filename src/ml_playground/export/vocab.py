"""Vocabulary helpers both target formats need: GPT-2's byte-level alphabet and implied merges.

Byte-level BPE (GPT-2, our `bpe`, llama.cpp's `gpt2` tokenizer model) spells every byte as one
printable character, so a token of arbitrary bytes is an ordinary string. Hugging Face's
`tokenizers` and llama.cpp both store tokens in that spelling.
"""

from __future__ import annotations

from functools import cache


@cache
def byte_to_char() -> dict[int, str]:
    """GPT-2's byte → character table: printable bytes map to themselves, the rest upwards of 256.

    The printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) keep their own
    character; every other byte b gets chr(256 + n) for the n-th such byte, so that no token
    needs whitespace or control characters (a space becomes 'Ġ', a newline 'Ċ').
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level(data: bytes) -> str:
    """`data` in GPT-2's byte-level spelling."""
    table = byte_to_char()
    return "".join(table[b] for b in data)


def implied_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The BPE merges a rank-ordered vocabulary implies (tiktoken ranks, SentencePiece BPE).

    Neither format stores merges: a token's id is its merge rank. Every way to cut a token into
    two tokens of the vocabulary is a merge; ranking merges by the id of the token they build
    (then by the halves' ids) makes "merge the pair that builds the lowest-ranked token" — what
    tiktoken and SentencePiece do — the same as "apply the lowest-ranked merge" (BPE's rule).
    """
    merges: list[tuple[int, int, int, str, str]] = []
    for token, token_id in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((token_id, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]
