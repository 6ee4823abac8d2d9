"""Image generation and blurring: the real work behind ``blurit.image``."""

from __future__ import annotations

import os
import random
import re
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

BLUR_RADIUS = 6
# A median pass costs real CPU (about 0.4 s on a 1920 px input), which gives
# the dashboards a runtime spread close to Blurit's seconds-long tasks.
DENOISE_SIZE = 5
DEFAULT_LONG_SIDE = 480
JPEG_QUALITY = 90

# Blurit names its uploads "<epoch ms>-<long side>.jpg"; the demo keeps the
# convention so the size of a generated input can be read from its name.
_SIZE_SUFFIX = re.compile(r"-(\d{2,4})$")


def input_dimensions(path: Path) -> tuple[int, int]:
    """Width and height (4:3) of the input image that ``generate_input`` makes for ``path``."""
    match = _SIZE_SUFFIX.search(path.stem)
    long_side = int(match.group(1)) if match else DEFAULT_LONG_SIDE
    return long_side, long_side * 3 // 4


def generate_input(path: Path) -> None:
    """Write a deterministic, edge-rich JPEG at ``path`` (same name, same pixels)."""
    width, height = input_dimensions(path)
    rng = random.Random(zlib.crc32(path.name.encode()))
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    # A checkerboard gives blur something to smooth everywhere, shapes on top
    # make the picture differ from one file to the next.
    cell = 16
    for y in range(0, height, cell):
        for x in range(0, width, cell):
            if (x // cell + y // cell) % 2 == 0:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(20, 20, 20))
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(10, width // 2), y0 + rng.randrange(10, height // 2)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    save_jpeg(image, path)


def denoise(image: Image.Image) -> Image.Image:
    return image.convert("RGB").filter(ImageFilter.MedianFilter(DENOISE_SIZE))


def blur(image: Image.Image) -> Image.Image:
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(BLUR_RADIUS))


def save_jpeg(image: Image.Image, path: Path) -> None:
    """Save atomically so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    image.save(partial, format="JPEG", quality=JPEG_QUALITY)
    os.replace(partial, path)
