"""Small MNIST-shaped data for tests and smoke runs: rendered digits with random jitter.

Each image is the glyph of its label drawn with Pillow's built-in font, scaled into a 20x20
box and placed in a 28x28 frame with random offset, rotation and stroke width, so models can
learn it and drift detectors see realistic structure. Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_mlops.data.constants import IMAGE_SIDE, NUM_CLASSES


def _glyph(label: int) -> Image.Image:
    font = ImageFont.load_default()
    canvas = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(canvas).text((4, 2), str(label), fill=255, font=font)
    box = canvas.getbbox() or (0, 0, 16, 16)
    return canvas.crop(box)


_GLYPHS = [_glyph(k) for k in range(NUM_CLASSES)]


def synthetic_digits(
    n: int, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (n, 28, 28) and int64 labels; balanced labels unless given."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    labels = np.asarray(labels, dtype=np.int64)
    images = np.zeros((n, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    for i, label in enumerate(labels):
        glyph = _GLYPHS[int(label)]
        height = int(rng.integers(16, 21))
        width = max(4, int(round(glyph.width * height / glyph.height * rng.uniform(0.8, 1.2))))
        digit = glyph.resize((min(width, 20), height), Image.BILINEAR)
        digit = digit.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, expand=True)
        if rng.random() < 0.5:
            digit = digit.filter(ImageFilter.MaxFilter(3))
        frame = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 0)
        left = (IMAGE_SIDE - digit.width) // 2 + int(rng.integers(-2, 3))
        top = (IMAGE_SIDE - digit.height) // 2 + int(rng.integers(-2, 3))
        frame.paste(digit, (left, top))
        images[i] = np.asarray(frame, dtype=np.uint8)
    return images, labels
