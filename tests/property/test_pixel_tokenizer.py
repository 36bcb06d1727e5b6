"""The pixel tokenizer's text form round-trips every id sequence, for every level count."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ml_playground.data.images import image_tokens
from ml_playground.data.pixel_tokenizer import PixelTokenizer
from ml_playground.data.tokenizers import load_tokenizer
from ml_playground.generate.images import parse_image


@st.composite
def tokenizer_and_ids(draw: st.DrawFn) -> tuple[PixelTokenizer, list[int]]:
    levels = draw(st.integers(2, 256))
    tokenizer = PixelTokenizer(levels, draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    ids = draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=200))
    return tokenizer, ids


@given(tokenizer_and_ids())
def test_encode_decode_round_trip(case: tuple[PixelTokenizer, list[int]]) -> None:
    tokenizer, ids = case
    assert tokenizer.encode(tokenizer.decode(ids)) == ids


@given(tokenizer_and_ids())
def test_save_load_keeps_the_vocabulary(case: tuple[PixelTokenizer, list[int]]) -> None:
    tokenizer, ids = case
    with TemporaryDirectory() as folder:
        tokenizer.save(Path(folder))
        loaded = load_tokenizer(Path(folder))
    assert isinstance(loaded, PixelTokenizer)
    assert (loaded.levels, loaded.height, loaded.width) == (
        tokenizer.levels,
        tokenizer.height,
        tokenizer.width,
    )
    assert loaded.decode(ids) == tokenizer.decode(ids)


@given(st.data())
def test_an_image_survives_tokens_text_and_back(data: st.DataObject) -> None:
    levels, height, width = data.draw(st.integers(2, 64)), data.draw(st.integers(1, 8)), 5
    label = data.draw(st.integers(0, 9))
    pixels = data.draw(
        st.lists(st.integers(0, levels - 1), min_size=height * width, max_size=height * width)
    )
    tokenizer = PixelTokenizer(levels, height, width)
    image = np.asarray(pixels).reshape(1, height, width)
    tokens = image_tokens(image, np.array([label]), levels)
    parsed, parsed_label = parse_image(tokenizer, tokenizer.decode(tokens.tolist()))
    assert parsed_label == label
    assert np.array_equal(parsed, image[0])
