"""Image helpers for views: displayable uint8 arrays, PNG ``data:`` URIs, class palettes."""

from __future__ import annotations

import base64
import colorsys
import io
from typing import Any

import numpy as np

MAX_DISPLAY_SIDE = 1024  # larger images are shrunk before they are embedded


def to_display(image: Any) -> np.ndarray:
    """An HxW or HxWx3 uint8 array showing ``image`` (HW, HWC with 1 or 3+ channels, any dtype).

    uint8 stays as it is; other dtypes (uint16 DICOM, floats) are stretched from their minimum
    to their maximum, so faint 12-bit scans are visible.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] > 3:
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3,)):
        raise ValueError(f"cannot show an array of shape {arr.shape} as an image")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    a = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 copy of a displayable image."""
    arr = to_display(image)
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr.copy()


def png_bytes(image: Any) -> bytes:
    """``image`` (any dtype, see to_display) as PNG bytes."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(to_display(image)))
    if max(pil.size) > MAX_DISPLAY_SIDE:
        pil.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(image: Any) -> str:
    """``image`` as a self-contained ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8, shape (n, 3)); class 0 (background) is black."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(1, n):
        hue = ((i - 1) * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out[:n] if n else out[:0]


def hex_color(rgb: Any) -> str:
    """``#rrggbb`` of an RGB triple."""
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"
