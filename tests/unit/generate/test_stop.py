from __future__ import annotations

from collections.abc import Sequence

import pytest

from ml_playground.generate.stop import StopTextStream, held_back


def chars(ids: Sequence[int]) -> str:
    return "".join(chr(i) for i in ids)


def feed(stream: StopTextStream, text: str) -> list[str]:
    deltas = []
    for ch in text:
        deltas.append(stream.push(ord(ch)))
        if stream.stopped:
            break
    return deltas


def test_held_back_is_the_longest_suffix_that_starts_a_stop() -> None:
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["world"]) == 0
    assert held_back("ab\n", ["\n\n", "b\nX"]) == 2
    assert held_back("ab", ["abc"]) == 2


def test_stop_ends_the_text_before_the_stop_string() -> None:
    stream = StopTextStream(chars, ["END"])
    deltas = feed(stream, "hello ENDING more")
    assert stream.stopped
    assert stream.text == "hello "
    assert "".join(deltas) + stream.flush() == "hello "


def test_streaming_never_emits_a_prefix_of_a_stop_string() -> None:
    stream = StopTextStream(chars, ["\n\n"])
    deltas = feed(stream, "one\ntwo\n\nthree")
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert "\n\n" not in emitted
    # "\n" after "one" was held back until "t" showed it was not a stop; the final "\n" never out.
    assert deltas[3] == ""
    assert deltas[4] == "\nt"
    assert emitted == "one\ntwo" == stream.text


def test_a_false_start_is_released_when_the_text_ends() -> None:
    stream = StopTextStream(chars, ["STOP"])
    deltas = feed(stream, "go ST")
    assert "".join(deltas) == "go "
    assert stream.flush() == "ST"
    assert stream.text == "go ST"
    assert not stream.stopped


@pytest.mark.parametrize("stops", [["a", "bc"], ["bc", "a"]])
def test_the_earliest_stop_wins(stops: list[str]) -> None:
    stream = StopTextStream(chars, stops)
    feed(stream, "xbca")
    assert stream.text == "x"


def test_no_stops_streams_every_character() -> None:
    stream = StopTextStream(chars)
    assert feed(stream, "abc") == ["a", "b", "c"]
    assert stream.flush() == ""


def test_incomplete_multibyte_characters_are_held_back() -> None:
    def utf8(ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    stream = StopTextStream(utf8, ["🙂"])
    out = [stream.push(b) for b in "é!".encode()]
    assert out == ["", "é", "!"]
    for b in "x🙂y".encode():
        stream.push(b)
    assert stream.stopped
    assert stream.text == "é!x"
