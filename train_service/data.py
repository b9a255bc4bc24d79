"""The training input pipeline: batches of a dataset stage as a backend-agnostic Keras PyDataset.

Per sample, on a thread pool (Pillow and numpy release the GIL), in DIGITS's order: decode,
colour shifts on raw pixels (training only), mean subtraction at full size, the crop (random when
training, centred otherwise), geometric augmentation and noise (training only), then ``* scale``.
Item ``k`` of batch ``i`` in epoch ``e`` draws its randomness from ``(seed, e, i, k)``, so batches
are the same whatever the prefetch order and however many threads or workers build them. Pass
``shuffle=False`` to ``Model.fit``: this class shuffles, reproducibly; Keras's own shuffle
reorders batches with the global ``random``.

When the stage's decoded samples fit ``cache_mb`` they are kept in memory as first decoded
(``train_service.shard_cache.SampleCache``): later epochs skip LMDB and decoding, and still
shuffle, crop and augment afresh, on copies. Beyond the budget, samples stream from the shards.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from digits.dataset import Dataset, Label, ShardReader
from digits.models.augment import Augment
from train_service.shard_cache import DEFAULT_CACHE_MB, SampleCache, acquire, release

__all__ = [
    "DEFAULT_CACHE_MB",
    "MEAN_MODES",
    "Augment",
    "ShardedDataset",
    "input_shape",
    "value_range",
]

MEAN_MODES = ("none", "image", "pixel")

SMALL_SAMPLE = 32 * 1024  # values per sample below which decoding stays on one thread


def value_range(dtype: str) -> float:
    """The full-scale pixel value of a feature dtype: 255 for uint8, 1.0 for floats."""
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if dt.kind in "iu" else 1.0


def _feature_shape(dataset: Dataset, stage: str | None = None) -> tuple[int, int, int]:
    shape = list(dataset.manifest.feature_shape)
    if not shape:
        stage = stage or dataset.stages[0]
        pairs = zip(dataset.shard_paths(stage), _shards(dataset, stage), strict=True)
        held: set[str] = set()
        try:
            shape = list(acquire(str(next(p for p, n in pairs if n)), held).get(0)[0].shape)
        finally:
            release(held)
    if len(shape) == 2:
        shape.append(1)
    if len(shape) != 3:
        raise ValueError(f"features must be HxWxC, not {shape}")
    return shape[0], shape[1], shape[2]


def _shards(dataset: Dataset, stage: str) -> list[int]:
    return [s.count for s in dataset.manifest.stages[stage].shards]


def input_shape(dataset: Dataset, crop_size: int | None = None) -> tuple[int, int, int]:
    """The network's input shape (H, W, C): the feature shape, or crop_size x crop_size."""
    h, w, c = _feature_shape(dataset)
    return (crop_size, crop_size, c) if crop_size else (h, w, c)


class ShardedDataset(keras.utils.PyDataset):
    """Batches ``(x float32 NHWC, y)`` of one stage; y is int32 labels or int32 HxW masks.

    When ``drop_remainder`` (default: ``training``) the last partial batch is left out, so
    ``len`` is ``count // batch_size`` (at least 1); otherwise ``ceil(count / batch_size)``.
    Array labels whose height and width match the feature's are masks: cropped, flipped and
    rotated with it. Other array labels come back as stored, cast to int32 or float32.
    """

    def __init__(
        self,
        dataset: Dataset,
        stage: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        mean: str = "none",
        crop_size: int | None = None,
        augment: Augment | None = None,
        training: bool = True,
        scale: float = 1.0,
        num_classes: int | None = None,
        decode_threads: int = 0,
        drop_remainder: bool | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if mean not in MEAN_MODES:
            raise ValueError(f"mean must be one of {', '.join(MEAN_MODES)}, not {mean!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, not {seed}")
        self.dataset, self.stage, self.batch_size = dataset, stage, batch_size
        self.shuffle, self.seed, self.training, self.scale = shuffle, seed, training, scale
        self.mean_mode, self.crop_size, self.num_classes = mean, crop_size or None, num_classes
        self.augment = augment if augment is not None and augment.active else None
        self.decode_threads = decode_threads or os.cpu_count() or 1
        # 0 means auto: threads only for samples big enough to pay for them.
        self._auto_threads = decode_threads == 0
        self.drop_remainder = training if drop_remainder is None else drop_remainder
        self.count = dataset.count(stage)
        counts = _shards(dataset, stage)
        if sum(counts) != self.count:
            raise ValueError(
                f"{stage}: shards hold {sum(counts)} samples, manifest says {self.count}"
            )
        if self.count == 0:
            raise ValueError(f"dataset {dataset.url} has no samples in {stage}")
        self._paths = [str(p) for p in dataset.shard_paths(stage)]
        self._offsets = np.cumsum([0, *counts])
        self.feature_shape = _feature_shape(dataset, stage)
        self.value_range = value_range(dataset.manifest.feature_dtype)
        h, w, c = self.feature_shape
        if crop_size is not None and not 0 <= crop_size <= min(h, w):
            raise ValueError(f"crop_size {crop_size} does not fit features of {h}x{w}")
        self.input_shape = (crop_size, crop_size, c) if crop_size else (h, w, c)
        self._mean = self._load_mean()
        self._epoch = 0
        self._order = self._make_order()
        self.cache_mb = cache_mb
        self._init_state()
        self.cache_bytes = self._cache.nbytes if self._cache is not None else 0

    def _load_mean(self) -> np.ndarray | None:
        if self.mean_mode == "none":
            return None
        m = self.dataset.mean()
        if m is None:
            raise ValueError(f"mean {self.mean_mode!r} asked, but {self.dataset.url} has no mean")
        m = np.asarray(m, np.float32)
        m = m[:, :, None] if m.ndim == 2 else m
        if m.shape != self.feature_shape:
            raise ValueError(f"mean image {m.shape} does not match features {self.feature_shape}")
        return (
            m.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
            if self.mean_mode == "pixel"
            else m
        )

    def _init_state(self) -> None:
        self._held: set[str] = set()
        self._finalizer = weakref.finalize(self, release, self._held)
        self._pid = os.getpid()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._cache: SampleCache | None = None
        if self.cache_mb > 0:
            first, label = self._read(0)
            self._cache = SampleCache.plan(self.count, first, label, self.cache_mb)
            if self._cache is not None:
                self._cache.put(0, first, label)

    def __getstate__(self) -> dict[str, Any]:
        drop = ("_held", "_finalizer", "_pid", "_pool", "_pool_lock", "_cache")
        return {k: v for k, v in self.__dict__.items() if k not in drop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    @property
    def mean_array(self) -> np.ndarray | None:
        """What is subtracted: the HxWxC mean image, the C-vector mean pixel, or None."""
        return self._mean

    @property
    def epoch(self) -> int:
        """The epoch whose order and randomness batches use now; ``on_epoch_end`` advances it."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order and randomness from now on (to resume a run)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, not {epoch}")
        self._epoch = epoch
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.count)
        return np.random.default_rng([self.seed, self._epoch]).permutation(self.count)

    def on_epoch_end(self) -> None:
        """Advance the epoch and reshuffle (seeded by seed and epoch).

        ``Model.fit`` calls this once before its first epoch too, so there epoch ``k`` runs as
        ``k + 1``; ``set_epoch(initial_epoch)`` before ``fit(initial_epoch=...)`` continues a run
        exactly. Reshuffling here, never in ``on_epoch_begin``, keeps the order fixed while
        Keras's workers prefetch (they start before ``on_epoch_begin`` is called).
        """
        self.set_epoch(self._epoch + 1)

    def __len__(self) -> int:
        if self.drop_remainder and self.count >= self.batch_size:
            return self.count // self.batch_size
        return math.ceil(self.count / self.batch_size)

    def indices(self, index: int) -> np.ndarray:
        """The global sample indices (across shards) of batch ``index`` this epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def _reader(self, shard: int) -> ShardReader:
        return acquire(self._paths[shard], self._held)

    def load(self, index: int) -> tuple[np.ndarray, Label]:
        """Sample ``index`` of the stage (counted across shards), decoded, as float32 HWC."""
        feature, label = self._decoded(index)
        return feature.astype(np.float32), label

    def _decoded(self, index: int) -> tuple[np.ndarray, Label]:
        """Sample ``index`` as stored (HWC, read-only when cached): from the cache or a shard."""
        cache = self._cache
        if cache is not None:
            hit = cache.get(index)
            if hit is not None:
                return hit
        feature, label = self._read(index)
        if cache is not None:
            cache.put(index, feature, label)
        return feature, label

    def _read(self, index: int) -> tuple[np.ndarray, Label]:
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        feature, label = self._reader(shard).get(index - int(self._offsets[shard]))
        feature = feature[:, :, None] if feature.ndim == 2 else feature
        if feature.shape != self.feature_shape:
            raise ValueError(
                f"{self.stage} sample {index} has shape {feature.shape}, not {self.feature_shape}"
            )
        return feature, label

    def _map(self, fn: Callable[[tuple[int, int, int]], Any], jobs: list[Any]) -> list[Any]:
        # Threads cost more than they save on small samples (unless asked for explicitly).
        small = self._auto_threads and math.prod(self.feature_shape) < SMALL_SAMPLE
        if self.decode_threads <= 1 or len(jobs) <= 1 or small:
            return [fn(job) for job in jobs]
        if self._pid != os.getpid():  # forked: the parent's threads and lock stayed behind
            self._pid, self._pool, self._pool_lock = os.getpid(), None, threading.Lock()
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.decode_threads, "digits-decode")
            pool = self._pool
        # One contiguous chunk per thread, not one task per sample: per-sample tasks cost more
        # in GIL hand-offs than small images take to decode.
        n = self.decode_threads
        chunks = [jobs[k::n] for k in range(n)]
        done = list(pool.map(lambda chunk: [fn(job) for job in chunk], chunks))
        out: list[Any] = [None] * len(jobs)
        for k, results in enumerate(done):
            out[k::n] = results
        return out

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = [int(i) for i in self.indices(index)]
        if self._per_batch():
            # Nothing random per sample: decode, then mean, crop and scale once for the batch.
            cached = self._cache.batch(idx) if self._cache is not None else None
            if cached is not None:
                stored, labels = cached
            else:
                decoded = self._map(self._decoded, idx)
                stored, labels = None, [label for _, label in decoded]
            if all(self._mask(label) is None for label in labels):
                if stored is None:
                    stored = np.stack([f for f, _ in decoded])
                x = stored.astype(np.float32)
                if self._mean is not None:
                    x -= self._mean
                if self.crop_size:
                    x, _ = self._crop(x, None, None)
                if self.scale != 1.0:
                    x *= np.float32(self.scale)
                return x, self._labels(labels, idx)
        samples = self._map(self.sample, [(i, index, k) for k, i in enumerate(idx)])
        x = np.stack([f for f, _ in samples])
        return x, self._labels([label for _, label in samples], idx)

    def _per_batch(self) -> bool:
        """Whether batches can be processed whole: no augmentation, no random crop."""
        if not self.training:
            return True
        return (self.augment is None or not self.augment.active) and not self.crop_size

    def sample(self, job: tuple[int, int, int]) -> tuple[np.ndarray, Label]:
        """Sample ``job[0]`` processed as item ``job[2]`` of batch ``job[1]``: ``(x HWC, y)``."""
        index, batch, item = job
        feature, label = self.load(index)
        x, mask = feature[None], self._mask(label)
        aug = self.augment if self.training else None
        # A generator costs ~9 us a sample: make one only when something random happens.
        random_crop = bool(self.crop_size) and self.training
        rng = (
            np.random.default_rng([self.seed, self._epoch, batch, item])
            if aug is not None or random_crop
            else None
        )
        if aug is not None:
            x = aug.color(x, rng, value_range=self.value_range)
        if self._mean is not None:
            x -= self._mean
        if self.crop_size:
            x, mask = self._crop(x, mask, rng)
        if aug is not None:
            x, mask = aug.geometry(x, rng, mask)
            x = aug.add_noise(x, rng, value_range=self.value_range)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return x[0].astype(np.float32, copy=False), label if mask is None else mask[0]

    def _mask(self, label: Label) -> np.ndarray | None:
        """A label that is an HxW (or HxWx1) array is a mask: (1, H, W), moved with the image."""
        h, w = self.feature_shape[:2]
        if not isinstance(label, np.ndarray) or label.shape[:2] != (h, w):
            return None
        if label.ndim == 2 or (label.ndim == 3 and label.shape[2] == 1):
            return label.reshape(1, h, w)
        return None

    def _labels(self, labels: list[Label], idx: list[int]) -> np.ndarray:
        if all(isinstance(lab, int) for lab in labels):
            y = np.asarray(labels, np.int32)
            if self.num_classes is not None:
                bad = (y < 0) | (y >= self.num_classes)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(
                        f"{self.stage} sample {idx[i]} has label {y[i]}, "
                        f"outside [0, {self.num_classes})"
                    )
            return y
        arrays = [np.asarray(lab) for lab in labels]
        kinds = {(isinstance(lab, int), a.shape) for lab, a in zip(labels, arrays, strict=True)}
        if len(kinds) > 1:
            raise ValueError(f"{self.stage} samples {idx}: labels differ in shape or kind")
        y = np.stack(arrays)
        return y.astype(np.int32) if y.dtype.kind in "biu" else y.astype(np.float32)

    def _crop(
        self, x: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        h, w, c = x.shape[1], x.shape[2], int(self.crop_size or 0)
        if self.training:
            a, b = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        else:
            a, b = (h - c) // 2, (w - c) // 2
        return x[:, a : a + c, b : b + c], None if masks is None else masks[:, a : a + c, b : b + c]

    @property
    def cached(self) -> int:
        """How many of the stage's samples are in memory now (0 when it streams)."""
        return self._cache.cached if self._cache is not None else 0

    def close(self) -> None:
        """Stop the decode threads, drop the cache; close shard files nobody else holds."""
        old = self._cache
        first = old.get(0) if old is not None else None
        if first is not None:  # a fresh, untouched cache: the memory goes back now
            self._cache = SampleCache(self.count, *first)
            self._cache.put(0, *first)
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)
        release(self._held)

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
