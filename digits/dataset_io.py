"""Dataset samples and shard files: msgpack-encoded samples, LMDB shards, the mean image.

Part of the dataset format (see ``digits.dataset``, which re-exports everything public here).
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import numpy as np

ENCODINGS = ("png", "jpg", "none")
JPEG_QUALITY = 90
Label = int | np.ndarray
Sample = tuple[np.ndarray, Label]


class _Array(msgspec.Struct):
    shape: list[int]
    dtype: str
    data: bytes


class _Sample(msgspec.Struct):
    shape: list[int]
    dtype: str
    encoding: str
    data: bytes
    label: int | _Array


def _to_array(arr: np.ndarray) -> _Array:  # raw data is little-endian
    data = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
    return _Array(list(arr.shape), arr.dtype.name, data)


def _from_array(a: _Array) -> np.ndarray:
    raw = np.frombuffer(a.data, np.dtype(a.dtype).newbyteorder("<"))
    return raw.astype(np.dtype(a.dtype)).reshape(a.shape)


def _hwc(feature: np.ndarray) -> np.ndarray:
    arr = np.asarray(feature)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.dtype.kind not in "biuf":
        raise ValueError(
            f"feature must be a numeric HxW or HxWxC array, not {arr.dtype} {arr.shape}"
        )
    return arr


def _image_bytes(arr: np.ndarray, encoding: str) -> bytes:
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[2] == 3):  # wrap, no copy
        mode = "L" if arr.ndim == 2 else "RGB"
        image = Image.frombuffer(mode, (arr.shape[1], arr.shape[0]), arr, "raw", mode, 0, 1)
    else:
        image = Image.fromarray(arr)
    return image_bytes(image, encoding)


def image_bytes(image: Any, encoding: str) -> bytes:
    """A PIL image as stored in a sample: PNG, or JPEG at ``JPEG_QUALITY`` for "jpg"."""
    buf = io.BytesIO()
    if encoding == "jpg":
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def encode_sample(
    feature: np.ndarray, label: Label, encoding: str = "png", *, image_bytes: bytes | None = None
) -> bytes:
    """One sample as the msgpack map stored in a shard (features HWC; 2-D becomes HxWx1).

    ``image_bytes``: the feature already in ``encoding`` (a source file that needed no change);
    the caller vouches that they decode to exactly ``feature``.
    """
    arr = _hwc(feature)
    h, w, c = arr.shape
    if encoding == "none":
        data = _to_array(arr).data
    elif encoding in ("png", "jpg"):
        ok = arr.dtype == np.uint8 and c in (1, 3)
        if not (ok or (encoding == "png" and arr.dtype == np.uint16 and c == 1)):
            allowed = "uint8 with 1 or 3 channels" + " or uint16 with 1" * (encoding == "png")
            raise ValueError(
                f"cannot encode a {arr.dtype} feature of shape {arr.shape} as {encoding} "
                f"(only {allowed}); use encoding 'none'"
            )
        data = image_bytes or _image_bytes(arr[:, :, 0] if c == 1 else arr, encoding)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if isinstance(label, int | np.integer) and not isinstance(label, bool):
        lab: int | _Array = int(label)
    else:
        lab = _to_array(np.asarray(label))
    return msgspec.msgpack.encode(_Sample([h, w, c], arr.dtype.name, encoding, data, lab))


def decode_sample(data: bytes) -> Sample:
    """The ``(feature HxWxC, label)`` of an encoded sample."""
    try:
        s = msgspec.msgpack.decode(data, type=_Sample)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a dataset sample: {exc}") from None
    label = s.label if isinstance(s.label, int) else _from_array(s.label)
    if s.encoding == "none":
        return _from_array(_Array(s.shape, s.dtype, s.data)), label
    if s.encoding not in ENCODINGS:
        raise ValueError(f"sample has unknown encoding {s.encoding!r}")
    from PIL import Image

    with Image.open(io.BytesIO(s.data)) as img:
        arr = np.asarray(img).astype(np.dtype(s.dtype), copy=False)
    if arr.size != int(np.prod(s.shape)):
        raise ValueError(f"decoded {s.encoding} image {arr.shape} does not match shape {s.shape}")
    return arr.reshape(s.shape), label


def sample_label(data: bytes) -> Label:
    """Only the label of an encoded sample (the image is not decoded)."""
    lab = msgspec.msgpack.decode(data, type=_Sample).label
    return lab if isinstance(lab, int) else _from_array(lab)


class ShardWriter:
    """Writes one LMDB shard file under a temporary name, renamed to ``path`` on a clean close."""

    def __init__(
        self, path: str | os.PathLike[str], map_size: int = 1 << 30, batch: int = 256
    ) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{secrets.token_hex(6)}")
        self._map_size, self._batch = map_size, batch
        self._pending: list[bytes] = []
        self.count = 0
        self.histogram: dict[str, int] = {}  # integer label -> count
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No sync per commit: the temporary file is synced once, in ``close``, before its rename
        # (a writer that dies leaves only a temporary file, written again from the start).
        self._env: Any = lmdb.open(
            str(self._tmp), subdir=False, map_size=map_size, lock=False, meminit=False, sync=False
        )

    def put(self, feature: np.ndarray, label: Label, encoding: str = "png") -> None:
        """Encode and append one sample."""
        self.put_encoded(encode_sample(feature, label, encoding))

    def put_encoded(self, data: bytes, *, count_labels: bool = True) -> None:
        """Append one already encoded sample (``count_labels=False`` skips the histogram)."""
        if self._env is None:
            raise ValueError(f"shard {self.path} is closed")
        if count_labels:
            label = sample_label(data)
            if isinstance(label, int):
                self.histogram[str(label)] = self.histogram.get(str(label), 0) + 1
        self._pending.append(data)
        self.count += 1
        if len(self._pending) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        first = self.count - len(self._pending)
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for i, data in enumerate(self._pending, first):
                        txn.put(f"{i:08d}".encode(), data, append=True)
                self._pending = []
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def close(self) -> Path:
        """Write what is pending and move the file to ``path``; return ``path``."""
        if self._env is not None:
            try:
                self._flush()
                self._env.sync(True)
                self._env.close()
                self._env = None
                os.replace(self._tmp, self.path)
            finally:
                self.abort()
        return self.path

    def abort(self) -> None:
        """Drop the shard: close LMDB and remove the temporary (and any lock) file."""
        env, self._env, self._pending = self._env, None, []
        if env is not None:
            env.close()
        for p in (self._tmp, Path(f"{self._tmp}-lock"), Path(f"{self.path}-lock")):
            p.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, typ: type[BaseException] | None, *exc: object) -> None:
        if typ is None:
            self.close()
        else:
            self.abort()


class ShardReader:
    """Reads one LMDB shard file (readonly, no lock file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no shard file {self.path}")
        self._env: Any = lmdb.open(str(self.path), subdir=False, readonly=True, lock=False)

    def __len__(self) -> int:
        return int(self._env.stat()["entries"])

    def raw(self) -> Iterator[bytes]:
        """The encoded samples in key order."""
        with self._env.begin() as txn:
            for _key, value in txn.cursor():
                yield bytes(value)

    def __iter__(self) -> Iterator[Sample]:
        return map(decode_sample, self.raw())

    def get(self, index: int) -> Sample:
        """The sample at ``index``; IndexError if there is none."""
        with self._env.begin() as txn:
            data = txn.get(f"{index:08d}".encode())
        if data is None:
            raise IndexError(f"shard {self.path} has no sample {index} ({len(self)} samples)")
        return decode_sample(data)

    def close(self) -> None:
        """Release the memory map."""
        self._env.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MeanAccumulator:
    """An exact running sum of features (float64), mergeable across shards.

    uint8 features, the usual kind, are first summed in a uint16 buffer (257 * 255 < 2**16)
    that is folded into the float64 sum every 257 features: far cheaper per feature, and exact.
    """

    BATCH = 257

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._batch: np.ndarray | None = None
        self._batched = 0
        self.count = 0

    @property
    def sum(self) -> np.ndarray | None:
        """The float64 sum of the features added (None before the first)."""
        self._fold()
        return self._sum

    def _check(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._sum is None:
            self._sum = np.zeros(shape, np.float64)
        elif self._sum.shape != shape:
            raise ValueError(f"feature shape {shape} differs from the mean's {self._sum.shape}")
        return self._sum

    def _fold(self) -> None:
        if self._batched:
            assert self._sum is not None and self._batch is not None
            self._sum += self._batch
            self._batch.fill(0)
            self._batched = 0

    def add(self, feature: np.ndarray) -> None:
        """Add one feature (HxW or HxWxC)."""
        arr = _hwc(feature)
        total = self._check(arr.shape)
        if arr.dtype == np.uint8:
            if self._batch is None:
                self._batch = np.zeros(arr.shape, np.uint16)
            np.add(self._batch, arr, out=self._batch)
            self._batched += 1
            if self._batched == self.BATCH:
                self._fold()
        else:
            total += arr
        self.count += 1

    def merge(self, other: MeanAccumulator) -> None:
        """Add another accumulator's sum and count."""
        theirs = other.sum
        if theirs is not None:
            self._check(theirs.shape).__iadd__(theirs)
            self.count += other.count

    def __getstate__(self) -> tuple[np.ndarray | None, int]:
        # Pickled (between processes) as the sum alone: while every feature is still in the
        # uint16 batch (a chunk of uint8 features), that exact batch, a quarter of the float64.
        if self._batched and self._batched == self.count:
            return self._batch, self.count
        return self.sum, self.count

    def __setstate__(self, state: tuple[np.ndarray | None, int]) -> None:
        total, self.count = state
        self._sum = None if total is None else total.astype(np.float64, copy=False)
        self._batch, self._batched = None, 0

    def to_bytes(self) -> bytes:
        """The sum and count as .npz bytes (np.save of each array)."""
        buf = io.BytesIO()
        total = self.sum
        np.savez(
            buf, sum=np.zeros(0) if total is None else total, count=np.array(self.count, np.int64)
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MeanAccumulator:
        """An accumulator saved by ``to_bytes``."""
        acc = cls()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            acc.count = int(npz["count"])
            acc._sum = npz["sum"].astype(np.float64) if acc.count else None
        return acc

    def mean(self) -> np.ndarray:
        """The mean feature as float32 HxWxC."""
        total = self.sum
        if total is None or not self.count:
            raise ValueError("no features were added; there is no mean")
        return (total / self.count).astype(np.float32)


def mean_npy_bytes(mean: np.ndarray) -> bytes:
    """``mean.npy``: the float32 mean saved with np.save."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(mean, np.float32), allow_pickle=False)
    return buf.getvalue()


def mean_png_bytes(mean: np.ndarray) -> bytes:
    """``mean.png``: the mean rounded to uint8 (1 or 3 channels; else the first channel)."""
    arr = np.clip(np.rint(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr if arr.shape[2] == 3 else arr[:, :, 0]
    return _image_bytes(arr, "png")
