"""The dataset format: msgpack samples in LMDB shard files, manifest.json, mean.npy and mean.png.

A dataset root holds ``manifest.json``, ``mean.npy``, ``mean.png`` and ``<stage>/shard-NNNNN.lmdb``
files (keys ``00000000``, ... in insertion order); ``open(url)`` reads it without the services.
Samples, shard files and the mean live in ``digits.dataset_io``; they are importable from here.
"""

from __future__ import annotations

import asyncio
import os
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

from digits.dataset_io import (
    ENCODINGS,
    JPEG_QUALITY,
    Label,
    MeanAccumulator,
    Sample,
    ShardReader,
    ShardWriter,
    decode_sample,
    encode_sample,
    image_bytes,
    mean_npy_bytes,
    mean_png_bytes,
    sample_label,
)
from digits.store import Store, check_key, open_store

__all__ = [
    "ENCODINGS",
    "FORMAT",
    "JPEG_QUALITY",
    "MANIFEST",
    "STAGES",
    "Dataset",
    "Label",
    "Manifest",
    "MeanAccumulator",
    "Sample",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "StageInfo",
    "decode_sample",
    "encode_sample",
    "image_bytes",
    "inspect",
    "load_manifest",
    "mean_npy_bytes",
    "mean_png_bytes",
    "open",
    "sample_label",
    "shard_key",
    "summary",
]

FORMAT = "digits-dataset/1"
MANIFEST = "manifest.json"
STAGES = ("train_db", "val_db", "test_db")


def shard_key(stage: str, index: int) -> str:
    """The key of shard ``index`` of ``stage``, relative to the dataset root."""
    return f"{stage}/shard-{index:05d}.lmdb"


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
