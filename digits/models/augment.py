"""DIGITS's data augmentation options, applied to float32 NHWC batches in plain numpy.

The random draws follow DIGITS's form: flips and quarter turns are coin tosses per image, the
rotation angle is uniform in ``[-rot, rot]`` degrees, the rescale factor is ``1 + N(0, scale)``
(clipped to two standard deviations), noise is ``N(0, noise)`` and the HSV shifts are
``N(0, hsv_h|s|v)``, all in units of a ``[0, 1]`` pixel range (``value_range`` maps that onto the
data's range: 255 for uint8 images). Rotations and rescaling keep the image size: bilinear
sampling (Pillow) for images, nearest for masks, zero where the source lies outside the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FLIPS = ("none", "fliplr", "flipud", "fliplrud")
QUAD_ROTS = ("none", "rot90", "rot180", "rotall")
_TURNS = {"none": (0,), "rot90": (0, 1, 3), "rot180": (0, 2), "rotall": (0, 1, 2, 3)}
_TRUE = {"1", "y", "yes", "true", "on"}


def _float(value: Any, default: float) -> float:
    return default if value is None or value == "" else float(value)


def _bool(value: Any) -> bool:
    return value.strip().lower() in _TRUE if isinstance(value, str) else bool(value)


@dataclass
class Augment:
    """DIGITS's augmentation options (the ``aug_*`` fields of its image model form)."""

    flip: str = "none"
    quad_rot: str = "none"
    rot: float = 0.0
    scale: float = 0.0
    noise: float = 0.0
    hsv_use: bool = False
    hsv_h: float = 0.02
    hsv_s: float = 0.04
    hsv_v: float = 0.06

    def __post_init__(self) -> None:
        if self.flip not in FLIPS:
            raise ValueError(f"aug_flip must be one of {', '.join(FLIPS)}, not {self.flip!r}")
        if self.quad_rot not in QUAD_ROTS:
            raise ValueError(
                f"aug_quad_rot must be one of {', '.join(QUAD_ROTS)}, not {self.quad_rot!r}"
            )
        for name, high in [("rot", 180), ("scale", 1), ("noise", 1)]:
            if not 0 <= getattr(self, name) <= high:
                raise ValueError(f"aug_{name} must be in [0, {high}], not {getattr(self, name)}")
        for name in ("hsv_h", "hsv_s", "hsv_v"):
            if not 0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"aug_{name} must be in [0, 0.5], not {getattr(self, name)}")

    @classmethod
    def from_form(cls, form: Mapping[str, Any]) -> Augment | None:
        """The options of a DIGITS model form (``aug_flip``, ...); None when all are off."""
        d = cls()
        aug = cls(
            flip=str(form.get("aug_flip") or d.flip),
            quad_rot=str(form.get("aug_quad_rot") or d.quad_rot),
            rot=_float(form.get("aug_rot"), d.rot),
            scale=_float(form.get("aug_scale"), d.scale),
            noise=_float(form.get("aug_noise"), d.noise),
            hsv_use=_bool(form.get("aug_hsv_use", d.hsv_use)),
            hsv_h=_float(form.get("aug_hsv_h"), d.hsv_h),
            hsv_s=_float(form.get("aug_hsv_s"), d.hsv_s),
            hsv_v=_float(form.get("aug_hsv_v"), d.hsv_v),
        )
        return aug if aug.active else None

    @property
    def active(self) -> bool:
        """Whether any option changes the data."""
        hsv = self.hsv_use and (self.hsv_h > 0 or self.hsv_s > 0 or self.hsv_v > 0)
        geo = self.flip != "none" or self.quad_rot != "none" or self.rot > 0 or self.scale > 0
        return geo or hsv or self.noise > 0

    def apply(
        self, batch: np.ndarray, rng: np.random.Generator, *, value_range: float = 255.0
    ) -> np.ndarray:
        """Every option on a float NHWC batch: colour, then geometry, then noise."""
        out = self.color(batch, rng, value_range=value_range)
        out, _ = self.geometry(out, rng)
        return self.add_noise(out, rng, value_range=value_range)

    def color(
        self, batch: np.ndarray, rng: np.random.Generator, *, value_range: float = 255.0
    ) -> np.ndarray:
        """HSV shifts of raw pixels in ``[0, value_range]`` (only V unless 3 channels)."""
        if not self.hsv_use:
            return batch
        n, c = batch.shape[0], batch.shape[-1]
        dh, ds, dv = (rng.normal(0.0, sd, n) if sd > 0 else np.zeros(n) for sd in self._hsv)
        if c != 3:
            shift = (dv * value_range).astype(batch.dtype)[:, None, None, None]
            return np.clip(batch + shift, 0, value_range)
        hsv = _rgb_to_hsv(np.clip(batch / value_range, 0, 1))
        hsv[..., 0] = (hsv[..., 0] + dh[:, None, None]) % 1.0
        hsv[..., 1] = np.clip(hsv[..., 1] + ds[:, None, None], 0, 1)
        hsv[..., 2] = np.clip(hsv[..., 2] + dv[:, None, None], 0, 1)
        return (_hsv_to_rgb(hsv) * value_range).astype(batch.dtype)

    @property
    def _hsv(self) -> tuple[float, float, float]:
        return self.hsv_h, self.hsv_s, self.hsv_v

    def geometry(
        self,
        batch: np.ndarray,
        rng: np.random.Generator,
        masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Flips, quarter turns, rotation and rescaling of NHWC images and their NHW masks."""
        n, h, w = batch.shape[:3]
        out, mout = batch.copy(), None if masks is None else masks.copy()
        if self.flip in ("fliplr", "fliplrud"):
            _flip_where(rng.random(n) < 0.5, 2, out, mout)
        if self.flip in ("flipud", "fliplrud"):
            _flip_where(rng.random(n) < 0.5, 1, out, mout)
        angle = np.zeros(n)
        if self.quad_rot != "none":
            turns = rng.choice(_TURNS[self.quad_rot], n)
            if h != w:  # odd turns cannot keep a non-square shape exactly: rotate by warping
                angle += np.where(turns % 2 == 1, turns * 90.0, 0.0)
                turns = np.where(turns % 2 == 1, 0, turns)
            for k in (1, 2, 3):
                sel = turns == k
                if sel.any():
                    out[sel] = np.rot90(out[sel], k, axes=(1, 2))
                    if mout is not None:
                        mout[sel] = np.rot90(mout[sel], k, axes=(1, 2))
        if self.rot > 0:
            angle += rng.uniform(-self.rot, self.rot, n)
        factor = np.ones(n)
        if self.scale > 0:
            dev = np.clip(rng.normal(0.0, self.scale, n), -2 * self.scale, 2 * self.scale)
            factor = np.maximum(1.0 + dev, 0.05)
        if (angle != 0).any() or (factor != 1).any():
            out = warp(out, angle, factor)
            mout = None if mout is None else warp(mout[..., None], angle, factor, "nearest")[..., 0]
        return out, mout

    def add_noise(
        self, batch: np.ndarray, rng: np.random.Generator, *, value_range: float = 255.0
    ) -> np.ndarray:
        """Additive white Gaussian noise with stddev ``noise * value_range``."""
        if self.noise <= 0:
            return batch
        return batch + rng.normal(0.0, self.noise * value_range, batch.shape).astype(batch.dtype)


def _flip_where(sel: np.ndarray, axis: int, out: np.ndarray, masks: np.ndarray | None) -> None:
    if sel.any():
        out[sel] = np.flip(out[sel], axis)
        if masks is not None:
            masks[sel] = np.flip(masks[sel], axis)


def warp(
    batch: np.ndarray, angle: np.ndarray, factor: np.ndarray, order: str = "bilinear"
) -> np.ndarray:
    """Rotate each NHWC image by ``angle`` degrees (counterclockwise) and zoom by ``factor``."""
    from PIL import Image

    n, h, w, c = batch.shape
    nearest = order == "nearest"
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    work = np.int32 if nearest else np.float32  # Pillow modes "I" and "F", one per channel
    out = np.empty(batch.shape, work)
    cx, cy = w / 2.0, h / 2.0  # Pillow puts pixel centres at +0.5
    for i in range(n):
        t, f = math.radians(float(angle[i])), float(factor[i])
        a, b, d, e = math.cos(t) / f, -math.sin(t) / f, math.sin(t) / f, math.cos(t) / f
        # output point p samples the source at c + R(-angle) (p - c) / factor (y points down)
        data = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
        for ch in range(c):
            img = Image.fromarray(np.ascontiguousarray(batch[i, :, :, ch], work))
            moved = img.transform((w, h), Image.Transform.AFFINE, data, resample, fillcolor=0)
            out[i, :, :, ch] = np.asarray(moved)
    return out.astype(batch.dtype, copy=False)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    d = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / d, np.where(v == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.choose(i, [c[k] for c in choices]) for k in range(3)], -1)
