"""The 'pixels' feature: PIL bilinear (antialiased) resize checked against a NumPy triangle filter."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fmri2img.models.pixels import make_pixels_extractor, pixels_to_image, resize_pixels


def _triangle_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased linear (triangle) filter, pixel centres at i + 0.5."""
    scale = n_in / n_out
    width = max(scale, 1.0)  # the triangle widens when shrinking (antialiasing)
    w = np.zeros((n_out, n_in))
    src = np.arange(n_in) + 0.5
    for o in range(n_out):
        centre = (o + 0.5) * scale
        w[o] = np.clip(1.0 - np.abs(src - centre) / width, 0.0, None)
        w[o] /= w[o].sum()
    return w


def _reference(images: np.ndarray, side: int) -> np.ndarray:
    out = []
    for img in images.astype(np.float64):
        wy = _triangle_matrix(img.shape[0], side)
        wx = _triangle_matrix(img.shape[1], side)
        out.append(np.einsum("yi,xj,ijc->yxc", wy, wx, img) / 255.0)
    return np.stack(out)


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = rng.normal(size=(2, 12, 12, 3)).repeat(8, axis=1).repeat(8, axis=2)  # 96 × 96 blocks
    noise = rng.normal(scale=0.3, size=smooth.shape)
    return np.clip(128 + 60 * (smooth + noise), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("side", [32, 24, 64])
def test_resize_matches_numpy_triangle_filter(images: np.ndarray, side: int) -> None:
    got = resize_pixels(images, side)
    assert got.shape == (2, side, side, 3) and got.dtype == np.float32
    ref = _reference(images, side)
    # PIL works in 8-bit fixed point with a rounded intermediate pass: within 1.5 grey levels
    assert np.abs(got - ref).max() <= 1.5 / 255
    assert np.abs(got - ref).mean() < 0.35 / 255


def test_resize_is_antialiased_not_point_sampled(images: np.ndarray) -> None:
    got = resize_pixels(images, 24)
    point = images[:, 2::4, 2::4].astype(np.float32) / 255  # nearest neighbour would look like this
    assert np.abs(got - point).max() > 10 / 255


def test_extractor_interface_and_determinism(images: np.ndarray) -> None:
    ex = make_pixels_extractor(side=16)
    assert (ex.name, ex.input, ex.feature_shape, ex.feature_dims, ex.random_weights) == (
        "pixels", "images", (16, 16, 3), ("y", "x", "rgb"), False)
    json.dumps(ex.attrs())
    assert ex.attrs()["side"] == 16
    full = ex.extract(images, np.array([5, 9]), seed=0)
    one = ex.extract(images[1:], np.array([9]), seed=123)
    assert full.dtype == np.float32 and full.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(full[1:], one)
    assert 0.0 <= full.min() and full.max() <= 1.0


def test_pixels_to_image_clips_and_rounds() -> None:
    feats = np.array([[[[-0.5, 0.0, 0.5], [1.0, 2.0, np.nan]]]], dtype=np.float32)
    np.testing.assert_array_equal(pixels_to_image(feats), [[[[0, 0, 128], [255, 255, 0]]]])
    constant = np.full((1, 40, 40, 3), 77, np.uint8)
    np.testing.assert_array_equal(pixels_to_image(resize_pixels(constant, 8)), np.full((1, 8, 8, 3), 77))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 3), np.uint8), r"shape \(4, 4, 3\).*images\[None\]"),
    (np.zeros((1, 4, 4), np.uint8), r"RGB"),
    (np.zeros((1, 4, 4, 3), np.float32), r"dtype float32.*uint8"),
])
def test_bad_images_one_clear_error(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_pixels_extractor(side=8).extract(bad, np.arange(len(bad)), seed=0)


def test_bad_factory_arguments() -> None:
    with pytest.raises(ValueError, match="side=0"):
        make_pixels_extractor(side=0)
    with pytest.raises(ValueError, match="no weights"):
        make_pixels_extractor(weights="/x.safetensors")
    with pytest.raises(ValueError, match="one id per image"):
        make_pixels_extractor(side=8).extract(np.zeros((2, 8, 8, 3), np.uint8), np.arange(3), seed=0)
    with pytest.raises(ValueError, match="pixel features"):
        pixels_to_image(np.zeros((4, 4)))
