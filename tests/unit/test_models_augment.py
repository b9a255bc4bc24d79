"""digits.models.augment: DIGITS's augmentation options on NHWC batches, and their form fields."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from digits.models import augment as augment_mod
from digits.models.augment import Augment, warp


def _batch(n: int = 32, h: int = 9, w: int = 9, c: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, c)).astype(np.float32)


@pytest.mark.parametrize(
    ("flip", "variants"),
    [
        ("fliplr", [(), (1,)]),
        ("flipud", [(), (0,)]),
        ("fliplrud", [(), (0,), (1,), (0, 1)]),
    ],
)
def test_flips_are_exact(flip: str, variants: list[tuple[int, ...]]) -> None:
    batch = _batch(h=6, w=7)
    out = Augment(flip=flip).apply(batch, np.random.default_rng(1))
    assert out.shape == batch.shape
    used = set()
    for got, img in zip(out, batch, strict=True):
        hits = [v for v in variants if np.array_equal(got, np.flip(img, v) if v else img)]
        assert len(hits) == 1
        used.add(hits[0])
    assert used == set(variants)


@pytest.mark.parametrize(
    ("quad", "turns"), [("rot90", {0, 1, 3}), ("rot180", {0, 2}), ("rotall", {0, 1, 2, 3})]
)
def test_quarter_turns(quad: str, turns: set[int]) -> None:
    batch = _batch()
    out = Augment(quad_rot=quad).apply(batch, np.random.default_rng(2))
    used = set()
    for got, img in zip(out, batch, strict=True):
        hits = [k for k in range(4) if np.array_equal(got, np.rot90(img, k, axes=(0, 1)))]
        assert len(hits) == 1
        used.add(hits[0])
    assert used == turns
    wide = _batch(h=6, w=10)  # a non-square image keeps its shape
    assert Augment(quad_rot=quad).apply(wide, np.random.default_rng(2)).shape == wide.shape


def test_warp_matches_rot90_and_keeps_the_centre() -> None:
    batch = _batch(4)
    np.testing.assert_allclose(
        warp(batch, np.full(4, 90.0), np.ones(4)), np.rot90(batch, 1, (1, 2)), atol=1e-4
    )
    np.testing.assert_allclose(warp(batch, np.zeros(4), np.ones(4)), batch)
    zoomed = warp(batch, np.zeros(4), np.full(4, 0.5))  # zooming out leaves a zero border
    assert (zoomed[:, 0] == 0).all() and (zoomed[:, 4, 4] == batch[:, 4, 4]).all()


@pytest.mark.parametrize(
    "aug",
    [
        Augment(rot=30),
        Augment(scale=0.2),
        Augment(noise=0.05),
        Augment(hsv_use=True, hsv_h=0.2, hsv_s=0.2, hsv_v=0.2),
    ],
)
def test_other_augmentations_keep_shapes_and_change_pixels(aug: Augment) -> None:
    batch = _batch()
    out = aug.apply(batch, np.random.default_rng(3))
    assert out.shape == batch.shape and out.dtype == np.float32
    changed = [not np.allclose(o, b, atol=0.5) for o, b in zip(out, batch, strict=True)]
    assert sum(changed) >= 28
    again = aug.apply(batch, np.random.default_rng(3))
    np.testing.assert_array_equal(out, again)  # the generator alone decides
    if aug.rot or aug.scale:  # rotation and rescaling turn about the centre
        np.testing.assert_allclose(out[:, 4, 4], batch[:, 4, 4], atol=1e-3)
    if aug.noise:
        assert abs(float((out - batch).std()) - 0.05 * 255) < 0.5


def test_hsv() -> None:
    rgb = np.random.default_rng(4).random((50, 3))
    hsv = augment_mod._rgb_to_hsv(rgb)
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-12)
    np.testing.assert_allclose(augment_mod._hsv_to_rgb(hsv), rgb, atol=1e-12)
    grey = np.full((8, 4, 4, 3), 100.0, np.float32)
    out = Augment(hsv_use=True, hsv_h=0.3, hsv_s=0, hsv_v=0).apply(grey, np.random.default_rng(0))
    np.testing.assert_allclose(out, grey, atol=1e-3)  # hue means nothing to grey
    one = _batch(c=1)
    out = Augment(hsv_use=True, hsv_v=0.2).apply(one, np.random.default_rng(0))
    assert out.shape == one.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, one)


def test_masks_follow_the_geometry() -> None:
    batch = _batch(c=1)
    masks = batch[..., 0].astype(np.int32)
    aug = Augment(flip="fliplrud", quad_rot="rotall")
    out, mout = aug.geometry(batch, np.random.default_rng(5), masks)
    assert mout is not None and mout.dtype == np.int32
    np.testing.assert_array_equal(mout, out[..., 0])
    out, mout = Augment(rot=40, scale=0.3).geometry(batch, np.random.default_rng(5), masks)
    assert mout is not None and mout.shape == masks.shape
    assert set(np.unique(mout)) <= set(np.unique(masks)) | {0}  # nearest: no new values


def test_from_form() -> None:
    assert Augment.from_form({}) is None
    assert Augment.from_form({"aug_flip": "none", "aug_rot": "0", "aug_hsv_use": False}) is None
    form = {
        "aug_flip": "fliplrud",
        "aug_quad_rot": "rot180",
        "aug_rot": "15",
        "aug_scale": 0.07,
        "aug_noise": "0.03",
        "aug_hsv_use": "y",
        "aug_hsv_h": "0.1",
        "aug_hsv_s": "",
        "aug_hsv_v": 0.2,
    }
    aug = Augment.from_form(form)
    assert aug == Augment("fliplrud", "rot180", 15.0, 0.07, 0.03, True, 0.1, 0.04, 0.2)
    with pytest.raises(ValueError, match="aug_flip"):
        Augment.from_form({"aug_flip": "sideways"})
    with pytest.raises(ValueError, match="aug_rot"):
        Augment(rot=200)
