"""Shard files shared by a process's pipelines, and the decoded-sample cache of one stage.

LMDB lets a process open a file once (a second ``lmdb.open`` raises "already open"), so every
``ShardedDataset`` of a process shares one reader per shard file, keyed by its real path (two
spellings of one file are one file), counted by holder and closed with the last one, or reopened
after a fork.

The cache keeps a stage's decoded samples (uint8 as stored, before the mean, crops and
augmentation) once they are first decoded, when the whole stage fits its budget: the first epoch
decodes, later ones copy out of memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading

import numpy as np

from digits.dataset import Label, ShardReader

__all__ = ["DEFAULT_CACHE_MB", "SampleCache", "acquire", "release"]

DEFAULT_CACHE_MB = 1024  # digits.config.Settings.train_cache_mb

_lock = threading.Lock()
_readers: dict[str, ShardReader] = {}
_refs: dict[str, int] = {}


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    for reader in _readers.values():
        with contextlib.suppress(Exception):
            reader.close()
    _readers.clear()


os.register_at_fork(after_in_child=_after_fork)


def acquire(path: str, held: set[str]) -> ShardReader:
    """The process's reader of ``path``, counted once for the holder ``held``."""
    key = os.path.realpath(path)
    with _lock:
        if key not in held:
            held.add(key)
            _refs[key] = _refs.get(key, 0) + 1
        reader = _readers.get(key)
        if reader is None:
            reader = _readers[key] = ShardReader(key)
        return reader


def release(held: set[str]) -> None:
    """Drop the holder's counts; close the readers nobody holds any more."""
    with _lock:
        for key in held:
            _refs[key] -= 1
            if _refs[key] <= 0:
                del _refs[key]
                reader = _readers.pop(key, None)
                if reader is not None:
                    reader.close()
        held.clear()


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class SampleCache:
    """Decoded features (one preallocated array) and labels of a stage, filled on first use.

    ``plan`` sizes it from one decoded sample and returns None when the stage does not fit the
    budget. The array is allocated untouched, so memory grows only as samples are decoded.
    What it hands out is read-only: the pipeline copies before it writes.
    """

    def __init__(self, count: int, feature: np.ndarray, label: Label) -> None:
        self.features = np.empty((count, *feature.shape), feature.dtype)
        self.labels: list[Label | None] = [None] * count
        self.filled = np.zeros(count, bool)
        self.nbytes = self.features.nbytes + count * _label_bytes(label)

    @classmethod
    def plan(
        cls, count: int, feature: np.ndarray, label: Label, budget_mb: float
    ) -> SampleCache | None:
        """A cache for ``count`` samples like this one, or None if they would exceed the budget."""
        need = count * (math.prod(feature.shape) * feature.dtype.itemsize + _label_bytes(label))
        if budget_mb <= 0 or need > budget_mb * 2**20:
            return None
        return cls(count, feature, label)

    def get(self, index: int) -> tuple[np.ndarray, Label] | None:
        """Sample ``index`` if it was decoded before, else None."""
        if not self.filled[index]:
            return None
        return _readonly(self.features[index]), self.labels[index]  # type: ignore[return-value]

    def put(self, index: int, feature: np.ndarray, label: Label) -> None:
        """Keep a decoded sample (threads may race to put the same one: same bytes)."""
        self.features[index] = feature
        if isinstance(label, np.ndarray):
            label = _readonly(label.copy())
        self.labels[index] = label
        self.filled[index] = True  # last: a reader that sees it sees the data

    def batch(self, indices: list[int]) -> tuple[np.ndarray, list[Label]] | None:
        """The features (a new array) and labels of ``indices`` if all are cached, else None."""
        if not self.filled[indices].all():
            return None
        return self.features[indices], [self.labels[i] for i in indices]  # type: ignore[misc]

    @property
    def cached(self) -> int:
        """How many samples are in memory."""
        return int(self.filled.sum())


def _label_bytes(label: Label) -> int:
    return int(label.nbytes) if isinstance(label, np.ndarray) else 0
