"""MNIST-style preprocessing: 20x20 fit, centre of mass at (14, 14), any canvas convention;
and, on the real test split, the picture path gives real MNIST digits back unchanged."""

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
    # MNIST's convention: centre of mass within half a pixel of (14, 14) in index coordinates
    assert 13.5 <= row < 14.5 and 13.5 <= col < 14.5, (row, col)
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


def _boxed_digit(extra: float) -> np.ndarray:
    """A 20-row-tall digit at rows 4..23 (the 20x20 fit is the identity) whose centre of mass
    is at row 14 + ``extra``: a bar (centre 13.5) plus weight on its bottom row."""
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 13:15] = 255  # columns: centre of mass 13.5, stays put too
    need = (14.0 + extra - 13.5) * float(img.sum()) / (23 - (14.0 + extra))
    pairs = int(np.ceil(need / 500))  # symmetric about column 13.5, beside the bar
    img[23, [13 - j for j in range(1, pairs + 1)] + [14 + j for j in range(1, pairs + 1)]] = round(
        need / (2 * pairs)
    )
    com = float((img.astype(float) * np.arange(28)[:, None]).sum() / img.sum())
    assert abs(com - (14.0 + extra)) < 0.02, com
    return img


@pytest.mark.parametrize(("extra", "moved"), [(-0.45, 0), (0.0, 0), (0.45, 0), (0.6, -1)])
def test_integer_shift_keeps_centres_within_half_a_pixel_of_14(extra: float, moved: int):
    """A digit whose centre of mass is already in [13.5, 14.5) stays where it is (byte for
    byte); one at 14.6 moves up one row. The old code centred on 13.5 and moved both."""
    digit = _boxed_digit(extra)
    out = mnist_style(digit / 255.0)
    np.testing.assert_array_equal(out, np.roll(digit, moved, axis=0))


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


@pytest.mark.slow
def test_real_mnist_digits_come_back_unchanged_through_the_picture_path(real_raw_dir):
    """Each of the 10,000 real test digits, encoded as a PNG, through the exact function the
    server runs on PNG uploads and the drawing canvas (``parse_image_upload`` with
    ``preprocess=true``): at least 70% must come back byte-identical (measured: 98.2%), and
    the round-tripped digits' centre-of-mass distribution must match the training split's
    (two-sample KS D < 0.05 per axis; measured: 0.012 rows, 0.008 columns)."""
    from scipy.stats import ks_2samp

    from mnist_mlops.data.features import image_features
    from mnist_mlops.data.idx import load_raw_mnist
    from mnist_mlops.serving.inputs import parse_image_upload

    raw = load_raw_mnist(real_raw_dir)
    test, train = raw["test"].images, raw["train"].images
    back = np.empty_like(test)
    for i, digit in enumerate(test):
        unit = parse_image_upload(_png(digit), preprocess=True, max_pixels=4096 * 4096)
        back[i] = np.round(unit[0] * 255.0).astype(np.uint8)
    identical = float((back == test).all(axis=(1, 2)).mean())
    print(f"picture round trip: {identical:.2%} of {len(test)} real test digits byte-identical")
    assert identical >= 0.70
    got, reference = image_features(back), image_features(train)
    for axis in ("com_row", "com_col"):
        distance = ks_2samp(got[axis], reference[axis]).statistic
        mean, train_mean = got[axis].mean(), reference[axis].mean()
        print(f"{axis}: mean {mean:.3f} (train {train_mean:.3f}), KS D {distance:.4f}")
        assert distance < 0.05, (axis, distance)
