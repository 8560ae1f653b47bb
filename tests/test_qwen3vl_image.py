"""Qwen3-VL image path vs transformers' Qwen2VLImageProcessor and qwen_vl_utils (tests/data/qwen3vl_tiny)."""

from pathlib import Path

import numpy as np
import pytest

from recap_jax.models import qwen3vl

DATA = np.load(Path(__file__).parent / "data" / "qwen3vl_tiny" / "image_io.npz")


def _pixels(levels):
    return (levels.astype(np.float32) / 255.0 - 0.5) / 0.5


def test_preprocess_image_matches_processor():
    pixel_values, grid = qwen3vl.preprocess_image(DATA["image"])
    assert pixel_values.shape == (264, 1536) and pixel_values.dtype == np.float32
    np.testing.assert_array_equal(grid, DATA["image_grid_thw"][0])
    np.testing.assert_allclose(pixel_values, _pixels(DATA["pixel_levels"]), atol=1e-5, rtol=0)


def test_psi0_image_first_stage():
    out = qwen3vl.psi0_image(DATA["image"])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, DATA["qwen_vl_utils_image"])


def test_two_stage_77_tokens():
    pixel_values, grid = qwen3vl.preprocess_image(qwen3vl.psi0_image(DATA["image"]))
    np.testing.assert_array_equal(grid, DATA["two_stage_image_grid_thw"][0])
    assert int(np.prod(grid)) // 4 == 77
    np.testing.assert_allclose(pixel_values, _pixels(DATA["two_stage_pixel_levels"]), atol=1e-5, rtol=0)


def test_psi0_image_nearest_halves_a_360x640_frame():
    frame = np.repeat(np.repeat(DATA["image"], 2, axis=0), 2, axis=1)  # 360×640, each pixel doubled
    np.testing.assert_array_equal(qwen3vl.psi0_image(frame), DATA["qwen_vl_utils_image"])


def test_bad_image_raises():
    with pytest.raises(ValueError, match="uint8 image"):
        qwen3vl.preprocess_image(np.zeros((32, 32, 3), np.float32))
