"""The MNIST8M-style generator: image i is a pure function of (seed, i), bounded deformations."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_mlops.data.deform import (
    DeformSettings,
    generate_range,
    generated_ids,
    sampling_coordinates,
)
from mnist_mlops.data.synthetic import synthetic_digits


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_digits(50, seed=3)


def test_image_depends_only_on_seed_and_index(source) -> None:
    images, labels = source
    whole, whole_labels = generate_range(images, labels, seed=11, start=0, stop=180)
    # the same indices cut into other chunks, including one straddling the source's wrap at 50
    for start, stop in [(0, 1), (37, 64), (99, 180), (179, 180)]:
        part, part_labels = generate_range(images, labels, seed=11, start=start, stop=stop)
        assert part.tobytes() == whole[start:stop].tobytes()
        np.testing.assert_array_equal(part_labels, whole_labels[start:stop])
    again, _ = generate_range(images, labels, seed=11, start=0, stop=180)
    assert again.tobytes() == whole.tobytes()


def test_different_seeds_give_different_images(source) -> None:
    images, labels = source
    a, _ = generate_range(images, labels, seed=1, start=0, stop=40)
    b, _ = generate_range(images, labels, seed=2, start=0, stop=40)
    differing = [not np.array_equal(x, y) for x, y in zip(a, b, strict=True)]
    assert all(differing)
    # and image i and i + N (same source digit, same seed) are different deformations
    c, _ = generate_range(images, labels, seed=1, start=50, stop=90)
    assert all(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_labels_carried_over_and_pixels_uint8(source) -> None:
    images, labels = source
    out, out_labels = generate_range(images, labels, seed=5, start=45, stop=160)
    np.testing.assert_array_equal(out_labels, labels[np.arange(45, 160) % len(labels)])
    assert out.dtype == np.uint8 and out.shape == (115, 28, 28)
    assert out.max() > 200  # ink survives bilinear sampling
    # a deformed digit keeps roughly its amount of ink (no blank or saturated frames)
    ink_ratio = out.reshape(115, -1).sum(1) / images[np.arange(45, 160) % 50].reshape(115, -1).sum(
        1
    )
    assert ink_ratio.min() > 0.5 and ink_ratio.max() < 2.0


def test_displacements_are_bounded_and_real() -> None:
    settings = DeformSettings()
    coords = sampling_coordinates(9, np.arange(300), settings)
    grid = np.stack(np.meshgrid(np.arange(28), np.arange(28), indexing="ij"))
    shift = np.linalg.norm(coords - grid, axis=1)
    assert shift.max() <= settings.max_displacement()
    assert 0.5 < np.sqrt((shift**2).mean()) < 6.0  # deformed, but still a digit's worth
    # with no elastic part and no affine range the map is the identity
    still = DeformSettings(
        alpha=0.0, max_rotation_deg=0, scale_low=1, scale_high=1, max_shear=0, max_translate=0
    )
    np.testing.assert_allclose(
        sampling_coordinates(9, np.arange(5), still),
        np.broadcast_to(grid, (5, 2, 28, 28)),
        atol=1e-12,
    )


def test_identity_settings_reproduce_the_source(source) -> None:
    images, labels = source
    still = DeformSettings(
        alpha=0.0, max_rotation_deg=0, scale_low=1, scale_high=1, max_shear=0, max_translate=0
    )
    out, _ = generate_range(images, labels, seed=0, start=0, stop=50, settings=still)
    np.testing.assert_array_equal(out, images)


def test_bad_inputs_are_named(source) -> None:
    images, labels = source
    with pytest.raises(ValueError, match="sigma"):
        DeformSettings(sigma=0)
    with pytest.raises(ValueError, match="scale_low"):
        DeformSettings(scale_low=1.2, scale_high=1.1)
    with pytest.raises(ValueError, match="start"):
        generate_range(images, labels, seed=0, start=5, stop=2)
    with pytest.raises(ValueError, match="non-empty"):
        generate_range(images[:0], labels[:0], seed=0, start=0, stop=2)


def test_ids_sort_in_index_order() -> None:
    ids = generated_ids(8, 12) + generated_ids(99_999, 100_001)
    assert ids == sorted(ids) and ids[0] == "mnist8m-0000000008"


def test_internal_sub_batches_do_not_change_bytes(source) -> None:
    images, labels = source
    whole, _ = generate_range(images, labels, seed=4, start=0, stop=1100)  # crosses 1024
    tail, _ = generate_range(images, labels, seed=4, start=1000, stop=1100)
    assert tail.tobytes() == whole[1000:].tobytes()
