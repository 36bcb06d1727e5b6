"""How many UTF-8 bytes of text a run of token ids stands for (the denominator of bits/byte)."""

from __future__ import annotations

import numpy as np

from ml_playground.data.tokenizers import Tokenizer

_CHUNK_TOKENS = 1 << 16


def count_text_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes of the text `ids` decode to, decoded chunk by chunk (bounded memory).

    End-of-text ids count 0 bytes: they mark a document boundary, not text (this matches the
    `train_bytes`/`val_bytes` that `prepare` records). Exact for char tokenizers; for BPE a
    character split across two chunks may count a few bytes off per 65,536 tokens.
    """
    eot = tokenizer.eot_id
    total = 0
    for start in range(0, len(ids), _CHUNK_TOKENS):
        piece = np.asarray(ids[start : start + _CHUNK_TOKENS])
        if eot is not None:
            piece = piece[piece != eot]
        total += len(tokenizer.decode(piece.tolist()).encode("utf-8"))
    return total
