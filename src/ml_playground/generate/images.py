"""Sampling an image model: a class-label prompt in, a PNG grid of generated images out.

An image preset's samples are token strings (``<7>00a5f...``); a person wants to look at them.
`sample_image_grid` draws `sample.num_samples` images in one batch, turns each back into a
height x width array of grey levels and writes them side by side as one PNG (10 per row, each
pixel scaled up so an 8x8 digit is visible). `--prompt 7` asks for sevens: a bare class label
becomes the image-end + class-token prefix every training image starts with.

The PNG is written with `matplotlib.image.imsave`, which draws nothing on screen (no pyplot
figure, no display), so it is safe on a headless server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ml_playground.config.schema import SampleConfig
from ml_playground.data.pixel_tokenizer import IMAGE_END, PixelTokenizer
from ml_playground.errors import MLPlaygroundError
from ml_playground.generate.service import GenerationSettings, LoadedModel, generate_batch

COLUMNS = 10
PAD = 1  # background pixels (before scaling) between and around images
TARGET_PIXELS = 64  # each image is scaled up by an integer factor to about this many pixels


def image_prompt(prompt: str) -> str:
    """A class label ("7") → "\\n<7>"; anything else is already pixel-token text."""
    label = prompt.strip()
    if label.isdigit():
        return f"{IMAGE_END}<{int(label)}>"
    return prompt


def parse_image(tokenizer: PixelTokenizer, text: str) -> tuple[np.ndarray, int | None]:
    """Pixel-token text → (height x width grey levels, class label or None).

    Leading image-end tokens are skipped, a class token is read, then pixels until anything else;
    a sample that stops early is padded with background (0), one that runs on is cut.
    """
    ids = tokenizer.encode(text)
    position = 0
    while position < len(ids) and ids[position] == tokenizer.image_end_id:
        position += 1
    label = None
    if position < len(ids) and tokenizer.levels <= ids[position] < tokenizer.image_end_id:
        label = ids[position] - tokenizer.levels
        position += 1
    pixels: list[int] = []
    for token in ids[position:]:
        if token >= tokenizer.levels or len(pixels) == tokenizer.pixels_per_image:
            break
        pixels.append(token)
    image = np.zeros(tokenizer.pixels_per_image, dtype=np.int64)
    image[: len(pixels)] = pixels
    return image.reshape(tokenizer.height, tokenizer.width), label


def grid_shape(count: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in PNG pixels of the grid `write_grid` draws for `count` images."""
    scale = max(1, TARGET_PIXELS // max(height, width))
    columns, rows = min(count, COLUMNS), math.ceil(count / COLUMNS)
    return (
        rows * (height + PAD) * scale + PAD * scale,
        columns * (width + PAD) * scale + PAD * scale,
    )


def write_grid(images: Sequence[np.ndarray], levels: int, path: Path) -> Path:
    """Grey-level images (0 = background) → one PNG, dark ink on white, 10 per row."""
    if not images:
        raise MLPlaygroundError("no images to draw")
    from matplotlib.image import imsave  # matplotlib is slow to import; only image presets need it

    height, width = images[0].shape
    scale = max(1, TARGET_PIXELS // max(height, width))
    columns, rows = min(len(images), COLUMNS), math.ceil(len(images) / COLUMNS)
    canvas = np.zeros((rows * (height + PAD) + PAD, columns * (width + PAD) + PAD))
    for index, image in enumerate(images):
        top = PAD + (index // COLUMNS) * (height + PAD)
        left = PAD + (index % COLUMNS) * (width + PAD)
        canvas[top : top + height, left : left + width] = image
    canvas = np.kron(canvas, np.ones((scale, scale)))
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, canvas, cmap="gray_r", vmin=0, vmax=levels - 1, format="png")
    return path


def sample_image_grid(
    loaded: LoadedModel,
    settings: SampleConfig,
    run_dir: Path,
    out: Path | None = None,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Generate `settings.num_samples` images in one batch, write the grid, return the texts."""
    tokenizer = loaded.tokenizer
    assert isinstance(tokenizer, PixelTokenizer)
    prompt = image_prompt(settings.prompt)
    tokenizer.encode(prompt)  # a bad prompt fails before any work
    generation = GenerationSettings.from_sample_config(settings)
    results = generate_batch(loaded, [prompt] * settings.num_samples, generation)
    texts = [prompt + result.text for result in results]
    parsed = [parse_image(tokenizer, text) for text in texts]
    target = out or run_dir / "samples" / f"digits_{time.strftime('%Y%m%d_%H%M%S')}.png"
    write_grid([image for image, _ in parsed], tokenizer.levels, target)
    labels = " ".join("?" if label is None else str(label) for _, label in parsed)
    say(f"wrote {len(parsed)} images to {target} (classes: {labels})")
    return texts
