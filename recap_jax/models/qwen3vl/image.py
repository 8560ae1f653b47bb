"""Qwen3-VL image path: transformers' Qwen2VLImageProcessor (`preprocess_image`) and Ψ0's first stage
(`psi0_image`), in numpy (host side, before the jitted forward)."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

PATCH = 16
TEMPORAL_PATCH = 2
MERGE = 2
MIN_PIXELS = 65536
MAX_PIXELS = 16777216
# qwen_vl_utils' image bounds for image_patch_size=16 (factor 32): 4·32² … 16384·32².
QVU_MIN_PIXELS = 4 * 32 * 32
QVU_MAX_PIXELS = 16384 * 32 * 32


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h, w) rounded to multiples of `factor` with h·w in [min_pixels, max_pixels], aspect kept."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.cache
def resample_matrix(in_size: int, out_size: int, bits: int | None = None) -> tuple[np.ndarray, int]:
    """Bicubic (a = −0.5, antialiased when downscaling) resampling weights as integer fixed point.

    Returns (int32 [out, in] weights w·2^bits rounded half away from zero, bits). ``bits=None``: torch's
    uint8 rule (the most bits, up to 22, that keep the largest weight below 2^15); PIL uses 22. The host
    path here and the on-device path (``vlm_encoder``) both use these weights.
    """
    scale = in_size / out_size
    widen = max(scale, 1.0)
    support = 2.0 * widen
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - centre + 0.5) / widen)
        w[i, lo:hi] = taps / taps.sum()
    if bits is None:
        bits = 0
        while bits < 22 and int(0.5 + w.max() * (1 << (bits + 1))) < (1 << 15):
            bits += 1
    q = np.trunc(w * (1 << bits) + np.where(w >= 0, 0.5, -0.5)).astype(np.int32)
    return q, bits


def _aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """float64 [out, in]: antialiased bicubic weights quantised to int16 fixed point as torch does."""
    q, bits = resample_matrix(in_size, out_size)
    return q / (1 << bits)


def _torch_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] → uint8 [height, width, 3] as torchvision's uint8 resize (bicubic, antialias):
    a width pass then a height pass, each with int16 fixed-point weights and rounding to uint8."""
    x = image.astype(np.float64)
    if x.shape[1] != width:
        x = np.einsum("oi,hic->hoc", _aa_weights(x.shape[1], width), x)
        x = np.clip(np.floor(x + 0.5), 0, 255)
    if x.shape[0] != height:
        x = np.einsum("oi,iwc->owc", _aa_weights(x.shape[0], height), x)
        x = np.clip(np.floor(x + 0.5), 0, 255)
    return x.astype(np.uint8)


def preprocess_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] → (pixel_values float32 [P, 1536], grid_thw int64 [3]) in Hugging Face's layout.

    P = grid_t·grid_h·grid_w patches of 3·2·16·16 values (channel, temporal, row, column), ordered
    by 2×2 merge window as the processor orders them.
    """
    image = _check_image(image)
    h, w = smart_resize(image.shape[0], image.shape[1], PATCH * MERGE, MIN_PIXELS, MAX_PIXELS)
    x = _torch_bicubic(image, h, w).astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    x = np.transpose(x, (2, 0, 1))[None]  # [1, C, H, W]
    x = np.repeat(x, TEMPORAL_PATCH, axis=0)  # the frame duplicated over the temporal patch
    gt, gh, gw = 1, h // PATCH, w // PATCH
    x = x.reshape(gt, TEMPORAL_PATCH, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = np.transpose(x, (0, 3, 6, 4, 7, 2, 1, 5, 8))
    pixel_values = x.reshape(gt * gh * gw, 3 * TEMPORAL_PATCH * PATCH * PATCH)
    return np.ascontiguousarray(pixel_values, np.float32), np.array([gt, gh, gw], np.int64)


def _nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's nearest interpolation (torchvision v2.Resize NEAREST): src = floor(dst · in / out)."""
    rows = np.minimum(np.floor(np.arange(height) * (image.shape[0] / height)).astype(np.int64), image.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(width) * (image.shape[1] / width)).astype(np.int64), image.shape[1] - 1)
    return image[rows][:, cols]


def psi0_image(image: np.ndarray) -> np.ndarray:
    """Ψ0's first image stage: uint8 [H, W, 3] → uint8 [h, w, 3], h and w multiples of 32.

    A 360×640 frame is first resized (nearest) to 180×320; then qwen_vl_utils' smart resize
    (factor 32, PIL bicubic). A 180×320 frame becomes 192×320.
    """
    image = _check_image(image)
    if image.shape[:2] == (360, 640):
        image = _nearest(image, 180, 320)
    h, w = smart_resize(image.shape[0], image.shape[1], 32, QVU_MIN_PIXELS, QVU_MAX_PIXELS)
    return _bicubic(image, h, w)
