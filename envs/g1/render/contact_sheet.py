"""Host-side helpers to tile rendered frames into one picture and save it as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(images: np.ndarray, columns: int = 4, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tiles frames into a grid.

    Args:
      images: uint8 [N, H, W, 3].
      columns: frames per row (the last row is padded with background).
      pad: pixels of background between and around frames.
    Returns:
      uint8 [rows * H + (rows + 1) * pad, columns * W + (columns + 1) * pad, 3].
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if columns <= 0 or pad < 0:
        raise ValueError(f"columns must be > 0 and pad >= 0, got {columns}, {pad}")
    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    sheet = np.full((rows * h + (rows + 1) * pad, columns * w + (columns + 1) * pad, 3), background, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        sheet[top : top + h, left : left + w] = img
    return sheet


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Writes uint8 [H, W, 3] to ``path`` (nearest-neighbour upscaled by ``scale``); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(image).save(path)
    return path
