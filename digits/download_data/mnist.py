"""MNIST: the four idx archives from Yann LeCun's page (or a mirror), written as PNG folders."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from digits.download_data.downloader import (
    DEFAULT_TIMEOUT,
    DataError,
    DatasetInfo,
    base_urls,
    fetch,
    prepare_outdir,
    say,
    write_labels,
    write_phase,
)

BASE_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
PHASES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
LABELS = [str(digit) for digit in range(10)]


def parse_idx(data: bytes, what: str = "idx data") -> np.ndarray:
    """Decode an (uncompressed) idx file of unsigned bytes into an array of its shape."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{what} is not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{what} is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + size:
        raise DataError(f"{what} holds {len(data) - header} bytes, expected {size} for {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzipped idx file; DataError if it is not one."""
    say(f"Reading {path} ...")
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable gzip file ({exc}); delete it or use --clean"
        ) from None
    try:
        return parse_idx(data, str(path))
    except DataError as exc:
        raise DataError(f"{exc}; delete it or use --clean") from None


def load_phase(root: Path, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """The (images, labels) arrays of ``phase`` from the archives in ``root``."""
    images_name, labels_name = PHASES[phase]
    images, labels = read_idx(root / images_name), read_idx(root / labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{images_name} {images.shape} and {labels_name} {labels.shape} do not match"
        )
    if len(labels) and int(labels.max()) >= len(LABELS):
        raise DataError(f"{labels_name} holds label {int(labels.max())}, expected 0-9")
    return images, labels


def download(
    outdir: str | os.PathLike[str],
    clean: bool = False,
    mirror: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DatasetInfo:
    """Download MNIST into ``outdir`` and write train/ and test/ as DIGITS did (inverted PNGs)."""
    root = prepare_outdir(outdir, clean)
    bases = base_urls(mirror, BASE_URLS)
    for names in PHASES.values():
        for name in names:
            fetch(name, bases, root, timeout)
    info = DatasetInfo(root, list(LABELS))
    write_labels(root, LABELS)
    for phase in PHASES:
        images, labels = load_phase(root, phase)
        say(f"Writing {len(images)} {phase} images ...")
        # DIGITS stores MNIST as black digits on a white background.
        inverted = (255 - image for image in images)
        info.counts[phase] = write_phase(root, phase, inverted, labels, LABELS)
    return info
