"""The benchmark's shifts do what their names say."""

from __future__ import annotations

import numpy as np
import pytest
from support.shifts import (
    IMAGE_SHIFTS,
    centre_of_mass,
    rotate,
    rotate_about_centre_of_mass,
    thicker_strokes,
)

from mnist_mlops.data.synthetic import synthetic_digits


def test_rotation_turns_about_the_centre_of_mass_counter_clockwise() -> None:
    bar = np.zeros((28, 28), np.uint8)
    bar[5:20, 14] = 255  # vertical, centre of mass (12, 14): not the array centre
    turned = rotate_about_centre_of_mass(bar, 90)
    ink = np.argwhere(turned > 100)
    assert set(ink[:, 0]) == {12} and (ink[:, 1].min(), ink[:, 1].max()) == (7, 21)
    assert turned[12, 7] > 100 and bar[5, 14] == 255  # the top went to the left: CCW
    assert np.allclose(centre_of_mass(turned), (12.0, 14.0), atol=0.05)


def test_rotated_digits_keep_their_centre_of_mass() -> None:
    images, _ = synthetic_digits(100, seed=3)
    rotated = rotate(30)(images, np.random.default_rng(0))
    moved = [
        np.hypot(*np.subtract(centre_of_mass(a), centre_of_mass(b)))
        for a, b in zip(images, rotated, strict=True)
    ]
    assert max(moved) < 0.5  # bilinear resampling and clipping at the border only
    assert not np.array_equal(rotated, images)


def test_dilation_is_2x2_and_named_so() -> None:
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 10, 10] = 200
    grown = thicker_strokes(2)(dot, np.random.default_rng(0))[0]
    assert np.argwhere(grown == 200).tolist() == [[9, 9], [9, 10], [10, 9], [10, 10]]
    # one pixel up and left: the centre of mass moves by -0.5 px on both axes
    assert np.allclose(np.subtract(centre_of_mass(grown), centre_of_mass(dot[0])), -0.5)
    assert "dilation_2x2" in IMAGE_SHIFTS and "thicker_strokes" not in IMAGE_SHIFTS


def test_fashion_mnist_loader_reads_the_idx_file_and_names_the_package_when_missing(
    tmp_path,
) -> None:
    from support.shifts import FASHION_MNIST_PACKAGE, fashion_mnist_images

    from mnist_mlops.data.idx import write_idx_gz

    with pytest.raises(FileNotFoundError, match=f"apt-get install -y {FASHION_MNIST_PACKAGE}"):
        fashion_mnist_images(tmp_path / "absent")
    images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28), dtype=np.uint8)
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    assert np.array_equal(fashion_mnist_images(tmp_path), images)
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images[:5])
    with pytest.raises(ValueError, match="expected 10000 images"):
        fashion_mnist_images(tmp_path)
