"""CIFAR-10: the python tarball from the University of Toronto (or a mirror), as PNG folders."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

BASE_URLS = ("https://www.cs.toronto.edu/~kriz/",)
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# The only globals the CIFAR pickles reference: numpy arrays (and bytes, in newer protocols).
_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the allowed globals (numpy.core is numpy._core since numpy 2)."""
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        try:
            return super().find_class(module, name)
        except ImportError:  # numpy < 2 without the numpy._core alias
            return super().find_class(module.replace("numpy._core", "numpy.core"), name)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def load_pickle(data: bytes, what: str = "pickle") -> dict[str, Any]:
    """Load a CIFAR pickle (Python 2 or 3) into a dict with str keys and str names."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # a corrupt pickle raises nearly anything
        raise DataError(f"{what} is not a CIFAR pickle: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} holds a {type(obj).__name__}, expected a dict")
    return {_text(key): _text(value) for key, value in obj.items()}


def read_members(path: Path, folder: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Load the pickles ``folder/<name>`` from the tarball ``path`` without extracting it."""
    say(f"Reading {path} ...")
    found: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            for name in names:
                try:
                    fh = tf.extractfile(f"{folder}/{name}")
                except KeyError:
                    fh = None
                if fh is None:
                    raise DataError(f"{path} has no file {folder}/{name}; delete it or use --clean")
                with fh:
                    found[name] = load_pickle(fh.read(), f"{folder}/{name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable tarball ({exc}); delete it or use --clean"
        ) from None
    return found


def field_of(obj: dict[str, Any], key: str, what: str) -> Any:
    """``obj[key]``, or a DataError naming ``what`` when it is missing."""
    if key not in obj:
        raise DataError(f"{what} has no {key!r} entry")
    return obj[key]


def images_of(batch: dict[str, Any], what: str) -> np.ndarray:
    """The batch's rows of 3072 bytes as (count, 32, 32, 3) RGB images."""
    data = np.asarray(field_of(batch, "data", what), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{what} data has shape {data.shape}, expected (count, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def labels_of(batch: dict[str, Any], key: str, count: int, n_labels: int, what: str) -> np.ndarray:
    """The batch's label indices under ``key``, checked against the image count and label list."""
    labels = np.asarray(field_of(batch, key, what), dtype=np.int64).reshape(-1)
    if len(labels) != count:
        raise DataError(f"{what} has {len(labels)} {key} for {count} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
        raise DataError(f"{what} {key} fall outside 0-{n_labels - 1}")
    return labels


def label_names(meta: dict[str, Any], key: str, what: str) -> list[str]:
    """The list of label names under ``key`` of a meta pickle."""
    names = field_of(meta, key, what)
    if not isinstance(names, list) or not names:
        raise DataError(f"{what} {key!r} is not a list of names")
    return [str(name) for name in names]


def download(
    outdir: str | os.PathLike[str],
    clean: bool = False,
    mirror: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DatasetInfo:
    """Download CIFAR-10 into ``outdir`` and write train/ and test/ with the label names."""
    root = prepare_outdir(outdir, clean)
    archive = fetch(ARCHIVE, base_urls(mirror, BASE_URLS), root, timeout)
    members = read_members(archive, FOLDER, ["batches.meta", *BATCHES["train"], *BATCHES["test"]])
    names = label_names(members["batches.meta"], "label_names", "batches.meta")
    info = DatasetInfo(root, names)
    write_labels(root, names)
    for phase, batches in BATCHES.items():
        images = [images_of(members[batch], batch) for batch in batches]
        labels = [
            labels_of(members[batch], "labels", len(imgs), len(names), batch)
            for batch, imgs in zip(batches, images, strict=True)
        ]
        all_images, all_labels = np.concatenate(images), np.concatenate(labels)
        say(f"Writing {len(all_images)} {phase} images ...")
        info.counts[phase] = write_phase(root, phase, all_images, all_labels, names)
    return info
