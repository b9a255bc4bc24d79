"""An offline stand-in for MNIST: one noisy shape per class, each class in its own place and hue."""

from __future__ import annotations

import colorsys
import math
import os

import numpy as np

from digits.download_data.downloader import (
    DatasetInfo,
    prepare_outdir,
    say,
    write_labels,
    write_phase,
)

DEFAULT_PER_CLASS = 100
SHAPES = ("square", "disk", "cross")


def label_names(classes: int) -> list[str]:
    """Class names "0", "1", ... zero-padded so that sorting them by name keeps their order."""
    width = len(str(classes - 1))
    return [f"{k:0{width}d}" for k in range(classes)]


def class_colors(classes: int) -> np.ndarray:
    """One saturated RGB colour (0-1 floats) per class, spread around the hue circle."""
    return np.array([colorsys.hsv_to_rgb(k / classes, 0.9, 1.0) for k in range(classes)])


def make_images(
    labels: np.ndarray, classes: int, size: int, channels: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw one uint8 image per label: a jittered bright shape on a noisy dark background.

    Class ``k`` puts shape ``SHAPES[k % 3]`` in cell ``k`` of a square grid (and, in colour,
    uses hue ``k / classes``), so a small convolutional network tells the classes apart.
    """
    count = len(labels)
    grid = math.ceil(math.sqrt(classes))
    cell = size / grid
    radius = max(1.5, cell * 0.4)
    jitter = max(1.0, cell * 0.1)
    centre_y = (labels // grid + 0.5) * cell + rng.uniform(-jitter, jitter, count)
    centre_x = (labels % grid + 0.5) * cell + rng.uniform(-jitter, jitter, count)
    coords = np.arange(size, dtype=np.float32)
    dy = np.abs(coords[None, :, None] - centre_y[:, None, None].astype(np.float32))
    dx = np.abs(coords[None, None, :] - centre_x[:, None, None].astype(np.float32))
    shape = (labels % len(SHAPES))[:, None, None]
    square = np.maximum(dy, dx) <= radius
    disk = dy * dy + dx * dx <= radius * radius
    arm = radius / 2.5
    cross = ((dy <= radius) & (dx <= arm)) | ((dx <= radius) & (dy <= arm))
    mask = np.where(shape == 0, square, np.where(shape == 1, disk, cross))
    brightness = rng.uniform(170.0, 255.0, count).astype(np.float32)[:, None, None]
    foreground = mask * brightness
    if channels == 1:
        image = foreground[..., None]
    else:
        colour = class_colors(classes)[labels].astype(np.float32)  # (count, 3)
        image = foreground[..., None] * colour[:, None, None, :]
    image = image + rng.normal(30.0, 18.0, (count, size, size, channels)).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def _check(classes: int, per_class: int, size: int, channels: int, test_per_class: int) -> None:
    if classes < 2:
        raise ValueError(f"classes must be at least 2, not {classes}")
    if per_class < 1 or test_per_class < 0:
        raise ValueError("per_class must be at least 1 and test_per_class at least 0")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, not {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels}")


def generate(
    outdir: str | os.PathLike[str],
    classes: int = 10,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
    test_per_class: int | None = None,
    clean: bool = False,
) -> DatasetInfo:
    """Write a synthetic image-classification set in the MNIST layout; the same seed, same set.

    ``test_per_class`` defaults to a fifth of ``per_class`` (at least 1); 0 writes no test/.
    """
    if test_per_class is None:
        test_per_class = max(1, per_class // 5)
    _check(classes, per_class, size, channels, test_per_class)
    root = prepare_outdir(outdir, clean)
    rng = np.random.default_rng(seed)
    names = label_names(classes)
    info = DatasetInfo(root, names)
    write_labels(root, names)
    for phase, count in (("train", per_class), ("test", test_per_class)):
        if count == 0:
            continue
        labels = rng.permutation(np.repeat(np.arange(classes), count))
        images = make_images(labels, classes, size, channels, rng)
        say(f"Writing {len(images)} synthetic {phase} images ...")
        info.counts[phase] = write_phase(root, phase, images, labels, names)
    return info
