"""Stop sequences on decoded text, safe for streaming.

A stop sequence can span several tokens, and a token can end in the middle of one, so text is
only emitted once it cannot turn out to be the start of a stop sequence: the longest suffix that
is a prefix of some stop string is held back until the next token settles it. The final text
excludes the stop sequence and everything after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class StopTextStream:
    """Token ids in, text deltas out; stops at the first stop sequence in the decoded text.

    Like `StreamingDecoder`, it decodes the whole sequence each time (so multi-byte characters
    split across tokens come out whole) and holds back a trailing incomplete character.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = [s for s in stop if s]
        self._ids: list[int] = []
        self._emitted = 0
        self._text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (maybe "")."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        full = self._decode(self._ids)
        # Search only the unemitted part: emitted text never holds the start of a stop sequence.
        hits = [i for i in (full.find(s, self._emitted) for s in self._stops) if i >= 0]
        if hits:
            end = min(hits)
            self.stopped = True
            self._text = full[:end]
            return self._advance(end)
        self._text = full
        safe = len(full.rstrip("\ufffd"))  # an incomplete character may still change
        safe -= held_back(full[:safe], self._stops)
        return self._advance(max(safe, self._emitted))

    def flush(self) -> str:
        """At the end of generation: whatever is still held back."""
        return self._advance(len(self._text))

    def _advance(self, end: int) -> str:
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta

    @property
    def text(self) -> str:
        """The text so far (final once stopped), held-back characters included."""
        return self._text
