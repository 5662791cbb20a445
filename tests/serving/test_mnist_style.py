"""MNIST-style preprocessing: 20x20 fit, centre of mass at the centre, any canvas convention."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_mlops.data.mnist_style import ImageInputError, image_bytes_to_mnist, mnist_style


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _drawn_seven(size: int = 280, ink: int = 255, paper: int = 0) -> np.ndarray:
    """A thick '7' drawn off-centre in the top-left of a big canvas, like a sloppy user."""
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    draw.line([(20, 30), (120, 30), (60, 200)], fill=ink, width=18)
    return np.asarray(image)


def _bbox(img: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(img.max(axis=1) > 25)
    cols = np.flatnonzero(img.max(axis=0) > 25)
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    x = img.astype(np.float64)
    grid = np.arange(img.shape[0])
    return float((x.sum(1) * grid).sum() / x.sum()), float((x.sum(0) * grid).sum() / x.sum())


def test_fits_20x20_keeps_aspect_and_centres_by_mass():
    out = image_bytes_to_mnist(_png(_drawn_seven()))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    height, width = _bbox(out)
    assert max(height, width) in (19, 20, 21)  # anti-aliased edge pixels may be faint
    assert height > width  # a tall 7 stays tall
    row, col = _centre_of_mass(out)
    assert abs(row - 13.5) <= 1.0 and abs(col - 13.5) <= 1.0
    assert out.max() == 255 and out[0].max() == 0  # white ink, black background


def test_polarity_and_transparency_give_the_same_digit():
    white_on_black = image_bytes_to_mnist(_png(_drawn_seven()))
    black_on_white = image_bytes_to_mnist(_png(_drawn_seven(ink=0, paper=255)))
    np.testing.assert_array_equal(white_on_black, black_on_white)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[..., 3] = _drawn_seven()  # black strokes on a transparent canvas
    np.testing.assert_array_equal(image_bytes_to_mnist(_png(rgba, mode="RGBA")), white_on_black)


def test_already_mnist_style_digit_is_nearly_unchanged(synthetic_processed_dir):
    from mnist_mlops.data.splits import load_split

    digits = load_split(synthetic_processed_dir / "test", limit=5).images
    once = np.stack([mnist_style(d / 255.0) for d in digits])
    twice = np.stack([mnist_style(d / 255.0) for d in once])
    assert np.abs(once.astype(int) - twice.astype(int)).mean() < 6  # idempotent up to resampling


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"not a png at all", "decode"),
        (_png(np.zeros((50, 50), np.uint8)), "blank"),
    ],
)
def test_bad_images_are_named(payload, message):
    with pytest.raises(ImageInputError, match=message):
        image_bytes_to_mnist(payload)
