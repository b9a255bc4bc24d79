"""The dataset format: msgpack samples in LMDB shard files, manifest.json, mean.npy and mean.png.

A dataset root holds ``manifest.json``, ``mean.npy``, ``mean.png`` and ``<stage>/shard-NNNNN.lmdb``
files (keys ``00000000``, ... in insertion order); ``open(url)`` reads it without the services.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import lmdb
import msgspec
import numpy as np

from digits.store import Store, check_key, open_store

FORMAT = "digits-dataset/1"
MANIFEST = "manifest.json"
STAGES = ("train_db", "val_db", "test_db")
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

    buf = io.BytesIO()
    kw: dict[str, Any] = {"format": "JPEG", "quality": JPEG_QUALITY}
    kw = kw if encoding == "jpg" else {"format": "PNG"}
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, **kw)
    return buf.getvalue()


def encode_sample(feature: np.ndarray, label: Label, encoding: str = "png") -> bytes:
    """One sample as the msgpack map stored in a shard (features HWC; 2-D becomes HxWx1)."""
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
        data = _image_bytes(arr[:, :, 0] if c == 1 else arr, encoding)
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


def shard_key(stage: str, index: int) -> str:
    """The key of shard ``index`` of ``stage``, relative to the dataset root."""
    return f"{stage}/shard-{index:05d}.lmdb"


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
        self._env: Any = lmdb.open(
            str(self._tmp), subdir=False, map_size=map_size, lock=False, meminit=False
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


class ShardInfo(msgspec.Struct):
    """One shard file: its key relative to the dataset root and its sample count."""

    key: str
    count: int


class StageInfo(msgspec.Struct):
    """A stage (train_db, val_db, test_db): shards, counts, label -> count histogram."""

    shards: list[ShardInfo] = msgspec.field(default_factory=list)
    count: int = 0
    skipped: int = 0
    histogram: dict[str, int] = msgspec.field(default_factory=dict)


class Manifest(msgspec.Struct, kw_only=True):
    """``manifest.json``: what a dataset holds and where its files are."""

    format: str = FORMAT
    job_id: str
    version: int = 1
    extension: str = ""
    created_at: float = msgspec.field(default_factory=time.time)
    labels: list[str] = msgspec.field(default_factory=list)
    feature_shape: list[int] = msgspec.field(default_factory=list)
    feature_dtype: str = "uint8"
    encoding: str = "png"
    stages: dict[str, StageInfo] = msgspec.field(default_factory=dict)
    mean: dict[str, str] = msgspec.field(default_factory=dict)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_json(self) -> bytes:
        """Indented JSON, for humans as much as for programs."""
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse and check ``manifest.json``."""
        try:
            m = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a dataset manifest: {exc}") from None
        if not m.format.startswith("digits-dataset/"):
            raise ValueError(f"manifest format {m.format!r} is not {FORMAT!r}")
        return m

    def stage_names(self) -> list[str]:
        """The stages present: train_db, val_db, test_db first."""
        extra = sorted(s for s in self.stages if s not in STAGES)
        return [s for s in STAGES if s in self.stages] + extra


class MeanAccumulator:
    """A float64 running sum of features, mergeable across shards."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.count = 0

    def _check(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.sum is None:
            self.sum = np.zeros(shape, np.float64)
        elif self.sum.shape != shape:
            raise ValueError(f"feature shape {shape} differs from the mean's {self.sum.shape}")
        return self.sum

    def add(self, feature: np.ndarray) -> None:
        """Add one feature (HxW or HxWxC)."""
        arr = _hwc(feature)
        self._check(arr.shape).__iadd__(arr)
        self.count += 1

    def merge(self, other: MeanAccumulator) -> None:
        """Add another accumulator's sum and count."""
        if other.sum is not None:
            self._check(other.sum.shape).__iadd__(other.sum)
            self.count += other.count

    def to_bytes(self) -> bytes:
        """The sum and count as .npz bytes (np.save of each array)."""
        buf = io.BytesIO()
        total = np.zeros(0) if self.sum is None else self.sum
        np.savez(buf, sum=total, count=np.array(self.count, np.int64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MeanAccumulator:
        """An accumulator saved by ``to_bytes``."""
        acc = cls()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            acc.count = int(npz["count"])
            acc.sum = npz["sum"].astype(np.float64) if acc.count else None
        return acc

    def mean(self) -> np.ndarray:
        """The mean feature as float32 HxWxC."""
        if self.sum is None or not self.count:
            raise ValueError("no features were added; there is no mean")
        return (self.sum / self.count).astype(np.float32)


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


class Dataset:
    """A dataset on the local disk (downloaded first when it lives in S3)."""

    def __init__(self, root: str | os.PathLike[str], manifest: Manifest, url: str = "") -> None:
        self.root, self.manifest = Path(root), manifest
        self.url = url or self.root.as_uri()

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.count(s)}" for s in self.stages)
        return f"Dataset({self.url!r}, {counts})"

    @property
    def labels(self) -> list[str]:
        """Class names (empty unless classification)."""
        return list(self.manifest.labels)

    @property
    def stages(self) -> list[str]:
        """The stage names present, train_db first."""
        return self.manifest.stage_names()

    def _stage(self, stage: str) -> StageInfo:
        if stage not in self.manifest.stages:
            raise KeyError(f"dataset has no stage {stage!r}; it has {self.stages}")
        return self.manifest.stages[stage]

    def count(self, stage: str = "train_db") -> int:
        """Samples in ``stage``."""
        return self._stage(stage).count

    def shard_paths(self, stage: str = "train_db") -> list[Path]:
        """The local shard files of ``stage``, in order."""
        return [self.root / check_key(s.key) for s in self._stage(stage).shards]

    def samples(self, stage: str = "train_db") -> Iterator[Sample]:
        """``(feature HxWxC, label)`` for every sample of ``stage``, shard by shard."""
        for path in self.shard_paths(stage):
            with ShardReader(path) as reader:
                yield from reader

    def __iter__(self) -> Iterator[Sample]:
        return self.samples("train_db")

    def mean(self) -> np.ndarray | None:
        """The float32 mean image, or None if the dataset has none."""
        key = self.manifest.mean.get("npy")
        path = self.root / check_key(key) if key else None
        return np.load(path, allow_pickle=False) if path and path.is_file() else None


def _split(url: str) -> tuple[str, Path | None]:
    """The dataset root URL, and its local path unless it is remote."""
    url = url.rstrip("/")
    url = url[: -len(MANIFEST)].rstrip("/") if url.endswith(MANIFEST) else url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return url, Path(unquote(parsed.path))
    return url, None if parsed.scheme else Path(url or ".").expanduser().resolve()


def _run(coro: Any) -> Any:
    """Run ``coro`` to completion, on a helper thread if an event loop runs in this one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _store(url: str, kw: dict[str, Any]) -> Store:
    return open_store(url, **{k: v for k, v in kw.items() if v is not None})


async def _download(store: Store, m: Manifest, dest: Path, refresh: bool) -> None:
    wanted = [(s.key, s.count) for st in m.stages.values() for s in st.shards]
    wanted += [(key, -1) for key in m.mean.values()]
    sem = asyncio.Semaphore(8)

    def cached(path: Path, count: int) -> bool:
        if refresh or not path.is_file():
            return False
        try:
            with ShardReader(path) as reader:
                return count < 0 or len(reader) == count
        except lmdb.Error:
            return count < 0

    async def one(key: str, count: int) -> None:
        path = dest / check_key(key)
        if not await asyncio.to_thread(cached, path, count):
            async with sem:
                await store.get_file(key, path)

    await asyncio.gather(*(one(key, count) for key, count in wanted))


def load_manifest(url: str, **store_kw: Any) -> Manifest:
    """Only the manifest of the dataset at ``url`` (store_kw: endpoint_url, access_key, ...)."""
    root, local = _split(url)
    if local is not None:
        return Manifest.from_json((local / MANIFEST).read_bytes())

    async def fetch() -> bytes:
        async with _store(root, store_kw) as store:
            return await store.get(MANIFEST)

    return Manifest.from_json(_run(fetch()))


def open(
    url: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    refresh: bool = False,
) -> Dataset:
    """The dataset at ``url`` (file://, s3:// or a local path; its root or its manifest.json)."""
    root, local = _split(url)
    if local is not None:
        return Dataset(local, Manifest.from_json((local / MANIFEST).read_bytes()), local.as_uri())
    kw = {"endpoint_url": endpoint_url, "region": region}
    kw |= {"access_key": access_key, "secret_key": secret_key}

    async def fetch() -> Dataset:
        async with _store(root, kw) as store:
            data = await store.get(MANIFEST)
            m = Manifest.from_json(data)
            job = root.rsplit("/", 1)[-1] or m.job_id
            dest = Path(cache_dir or Path.home() / ".cache" / "digits" / "datasets" / job)
            await _download(store, m, dest, refresh)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / MANIFEST).write_bytes(data)
            return Dataset(dest, m, root)

    return _run(fetch())


def summary(m: Manifest) -> str:
    """A human-readable description of a manifest."""
    created = datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    stages = m.stage_names()
    lines = [
        f"dataset   {m.job_id} ({m.format}, version {m.version}, {m.extension or '-'})",
        f"created   {created}",
        f"features  {'x'.join(map(str, m.feature_shape)) or '?'} {m.feature_dtype}, {m.encoding}",
        f"mean      {', '.join(m.mean.values()) if m.mean else 'none'}",
        f"labels    {len(m.labels)}" + (f": {', '.join(m.labels)}" if m.labels else ""),
        f"{'stage':<12}{'samples':>10}{'skipped':>10}{'shards':>8}",
    ]
    for s in stages:
        st = m.stages[s]
        lines.append(f"{s:<12}{st.count:>10}{st.skipped:>10}{len(st.shards):>8}")
    keys = list(dict.fromkeys(k for s in stages for k in m.stages[s].histogram))
    if keys:
        # Keys are label names; an index key (older writers) is shown with its name.
        order = {str(i): i for i in range(len(m.labels))} | {n: i for i, n in enumerate(m.labels)}
        keys.sort(key=lambda k: (order.get(k, len(order)), k))
        names = [
            f"{k} {m.labels[int(k)]}"
            if k not in m.labels and k.isdigit() and int(k) < len(m.labels)
            else k
            for k in keys
        ]
        width = max(len(n) for n in [*names, "label"]) + 2
        lines.append("histogram".ljust(width) + "".join(f"{s:>10}" for s in stages))
        for k, name in zip(keys, names, strict=True):
            counts = (m.stages[s].histogram.get(k, 0) for s in stages)
            lines.append(f"  {name}".ljust(width) + "".join(f"{c:>10}" for c in counts))
    return "\n".join(lines) + "\n"


def inspect(url: str, **store_kw: Any) -> str:
    """A human-readable summary of the dataset at ``url`` (reads only its manifest)."""
    return summary(load_manifest(url, **store_kw))
