"""The dataset format: samples, LMDB shards, the manifest, mean images, open() and inspect()."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from pathlib import Path

import lmdb
import msgspec
import numpy as np
import pytest
from aiobotocore.session import get_session
from PIL import Image

from digits import dataset
from digits.dataset import (
    Manifest,
    MeanAccumulator,
    ShardInfo,
    ShardReader,
    ShardWriter,
    StageInfo,
    decode_sample,
    encode_sample,
    mean_npy_bytes,
    mean_png_bytes,
    shard_key,
)
from digits.store import FileStore, S3Store, Store

RNG = np.random.default_rng(7)
CREDS = {"access_key": "testing", "secret_key": "testing"}


def _gradient(h: int, w: int, c: int) -> np.ndarray:
    """A smooth uint8 image (JPEG keeps it close)."""
    y, x = np.mgrid[0:h, 0:w]
    chans = [(x * 2 + y * 2 + 20 * k) % 256 for k in range(c)]
    return np.stack(chans, axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- samples


@pytest.mark.parametrize(
    ("feature", "encoding"),
    [
        (RNG.integers(0, 256, (5, 7), dtype=np.uint8), "png"),
        (RNG.integers(0, 256, (5, 7, 1), dtype=np.uint8), "png"),
        (RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8), "png"),
        (RNG.integers(0, 65536, (6, 4), dtype=np.uint16), "png"),
        (RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8), "none"),
        (RNG.random((3, 2, 5), dtype=np.float32), "none"),
        (RNG.integers(-500, 500, (4, 4), dtype=np.int16), "none"),
        (RNG.random((2, 3, 1)).astype(">f8"), "none"),
    ],
)
def test_lossless_round_trip(feature: np.ndarray, encoding: str) -> None:
    data = encode_sample(feature, 3, encoding)
    out, label = decode_sample(data)
    want = feature if feature.ndim == 3 else feature[:, :, None]
    assert out.shape == want.shape and out.dtype == want.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, want)
    assert label == 3 and type(label) is int


@pytest.mark.parametrize("channels", [1, 3])
def test_jpg_round_trip(channels: int) -> None:
    feature = _gradient(32, 48, channels)
    out, label = decode_sample(encode_sample(feature, np.int64(1), "jpg"))
    assert out.shape == (32, 48, channels) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - feature.astype(int)).mean() < 4
    assert label == 1 and type(label) is int


def test_sample_is_a_plain_msgpack_map() -> None:
    feature = _gradient(4, 6, 3)
    raw = msgspec.msgpack.decode(encode_sample(feature, 2, "png"))
    assert list(raw) == ["shape", "dtype", "encoding", "data", "label"]
    assert raw["shape"] == [4, 6, 3] and raw["dtype"] == "uint8" and raw["encoding"] == "png"
    assert raw["label"] == 2
    with Image.open(io.BytesIO(raw["data"])) as img:  # readable by any PNG decoder
        np.testing.assert_array_equal(np.asarray(img), feature)
    none = msgspec.msgpack.decode(encode_sample(feature, 2, "none"))
    assert none["data"] == feature.tobytes()


@pytest.mark.parametrize(
    "label",
    [
        RNG.integers(0, 5, (5, 7), dtype=np.uint8),  # segmentation mask
        np.array([0.5, -1.25, 3.0], dtype=np.float32),  # regression target
        np.float64(2.5),
        np.array([[1, 2], [3, 4]], dtype=">i4"),
    ],
)
def test_array_labels(label: np.ndarray) -> None:
    data = encode_sample(_gradient(5, 7, 1), label, "png")
    raw = msgspec.msgpack.decode(data)["label"]
    assert set(raw) == {"shape", "dtype", "data"}
    _, out = decode_sample(data)
    assert isinstance(out, np.ndarray)
    assert out.shape == np.shape(label) and out.dtype == np.asarray(label).dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, label)
    assert dataset.sample_label(data).shape == np.shape(label)


@pytest.mark.parametrize(
    ("feature", "encoding", "words"),
    [
        (np.zeros((4, 4), np.uint16), "jpg", ["uint16", "(4, 4, 1)", "jpg"]),
        (np.zeros((4, 4, 3), np.uint16), "png", ["uint16", "(4, 4, 3)", "png"]),
        (np.zeros((4, 4), np.float32), "png", ["float32", "png"]),
        (np.zeros((4, 4, 4), np.uint8), "png", ["uint8", "(4, 4, 4)", "png"]),
        (np.zeros((4, 4, 2), np.uint8), "jpg", ["(4, 4, 2)", "jpg"]),
        (np.zeros((4, 4), np.uint8), "webp", ["webp"]),
        (np.zeros((2, 4, 4, 3), np.uint8), "none", ["(2, 4, 4, 3)"]),
        (np.zeros(5, np.uint8), "none", ["(5,)"]),
        (np.array([["a"]]), "none", ["<U1"]),
    ],
)
def test_encode_rejects(feature: np.ndarray, encoding: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        encode_sample(feature, 0, encoding)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "data", [b"", b"\x00garbage", msgspec.msgpack.encode({"shape": [1, 1, 1]})]
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a dataset sample"):
        decode_sample(data)


# ---------------------------------------------------------------- shards


def _features(n: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(n)]


def test_shard_write_read(tmp_path: Path) -> None:
    path = tmp_path / "train_db" / "shard-00000.lmdb"
    feats = _features(12)
    with ShardWriter(path, batch=5) as w:
        for i, f in enumerate(feats):
            w.put(f, i % 3)
        w.put_encoded(encode_sample(feats[0], 7, "none"))
        assert w.count == 13 and w.path == path
        assert not path.exists()  # only renamed on close
    assert w.histogram == {"0": 4, "1": 4, "2": 4, "7": 1}
    assert sorted(os.listdir(path.parent)) == ["shard-00000.lmdb"]  # no temp or lock file
    with ShardReader(path) as r:
        assert len(r) == 13
        samples = list(r)
        assert [label for _, label in samples] == [0, 1, 2] * 4 + [7]
        for (got, _), want in zip(samples, feats + feats[:1], strict=True):
            np.testing.assert_array_equal(got, want)
        assert [decode_sample(b)[1] for b in r.raw()] == [0, 1, 2] * 4 + [7]
        np.testing.assert_array_equal(r.get(11)[0], feats[11])
        with pytest.raises(IndexError, match="13 samples"):
            r.get(13)
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [f"{i:08d}".encode() for i in range(13)]
    env.close()
    with pytest.raises(ValueError, match="closed"):
        w.put(feats[0], 0)


def test_shard_exception_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shard-00003.lmdb"
    with pytest.raises(RuntimeError, match="worker died"), ShardWriter(path, batch=2) as w:
        for f in _features(5):
            w.put(f, 1)
        raise RuntimeError("worker died")
    assert os.listdir(tmp_path) == []
    # a redelivered shard that fails again leaves the earlier, complete file untouched
    with ShardWriter(path) as w:
        w.put(_features(1)[0], 4)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), ShardWriter(path) as w:
        w.put(_features(1)[0], 5)
        raise RuntimeError("again")
    assert os.listdir(tmp_path) == [path.name] and path.read_bytes() == before


def test_shard_grows_map(tmp_path: Path) -> None:
    path = tmp_path / "big.lmdb"
    feats = [RNG.random((16, 16, 3), dtype=np.float32) for _ in range(60)]  # ~3 KB each
    with ShardWriter(path, map_size=64 << 10, batch=20) as w:
        for i, f in enumerate(feats):
            w.put(f, i, "none")
    assert path.stat().st_size > 64 << 10
    with ShardReader(path) as r:
        assert len(r) == 60
        for i, (got, label) in enumerate(r):
            assert label == i
            np.testing.assert_array_equal(got, feats[i])


def test_shard_reader_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.lmdb"):
        ShardReader(tmp_path / "nope.lmdb")


# ---------------------------------------------------------------- mean


def test_mean_merge_equals_global_mean() -> None:
    feats = [RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(30)]
    parts = [MeanAccumulator() for _ in range(3)]
    for i, f in enumerate(feats):
        parts[i % 3].add(f)
    total = MeanAccumulator()
    total.merge(MeanAccumulator())  # an empty shard adds nothing
    for part in parts:
        total.merge(MeanAccumulator.from_bytes(part.to_bytes()))
    assert total.count == 30
    want = np.mean(np.stack(feats).astype(np.float64), axis=0)
    assert total.mean().dtype == np.float32
    np.testing.assert_allclose(total.mean(), want, rtol=1e-6)
    empty = MeanAccumulator.from_bytes(MeanAccumulator().to_bytes())
    assert empty.count == 0 and empty.sum is None
    with pytest.raises(ValueError, match="no features"):
        empty.mean()
    with pytest.raises(ValueError, match="differs"):
        total.add(np.zeros((4, 5), np.uint8))
    gray = MeanAccumulator()
    gray.add(np.full((2, 3), 10, np.uint16))
    assert gray.mean().shape == (2, 3, 1)


def test_mean_of_many_uint8_features_is_exact() -> None:
    # uint8 features are summed in uint16 and folded every 257: far past that, still exact.
    feats = [np.full((2, 3, 1), 255 - i % 7, np.uint8) for i in range(1000)]
    acc = MeanAccumulator()
    for f in feats[:600]:
        acc.add(f)
    acc.add(np.full((2, 3, 1), 1000, np.uint16))  # another dtype of the same shape
    for f in feats[600:]:
        acc.add(f[:, :, 0])
    want = (np.sum([int(f[0, 0, 0]) for f in feats]) + 1000) / 1001
    assert acc.count == 1001 and acc.sum is not None and acc.sum.dtype == np.float64
    assert acc.sum[0, 0, 0] == want * 1001
    back = MeanAccumulator.from_bytes(acc.to_bytes())
    assert back.count == 1001 and np.array_equal(back.sum, acc.sum)
    np.testing.assert_allclose(back.mean(), np.full((2, 3, 1), want, np.float32))


@pytest.mark.parametrize("shape", [(4, 5, 3), (4, 5, 1), (4, 5), (4, 5, 4)])
def test_mean_png(shape: tuple[int, ...]) -> None:
    mean = RNG.random(shape) * 300 - 20
    with Image.open(io.BytesIO(mean_png_bytes(mean))) as img:
        out = np.asarray(img)
    want = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    want = want[:, :, 0] if len(shape) == 3 and shape[2] != 3 else want
    np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------- manifest


def _manifest() -> Manifest:
    return Manifest(
        job_id="job1",
        extension="image-classification",
        created_at=1_700_000_000.5,
        labels=["cat", "dog", "bird"],
        feature_shape=[6, 5, 3],
        encoding="png",
        stages={
            "train_db": StageInfo(
                shards=[
                    ShardInfo(shard_key("train_db", 0), 4),
                    ShardInfo(shard_key("train_db", 1), 3),
                ],
                count=7,
                skipped=2,
                histogram={"0": 3, "1": 2, "2": 2},
            ),
            "val_db": StageInfo([ShardInfo(shard_key("val_db", 0), 2)], 2, 0, {"0": 1, "2": 1}),
        },
        mean={"npy": "mean.npy", "png": "mean.png"},
        extra={"resize": {"mode": "squash"}, "source": "/data/pets"},
    )


def test_manifest_json_round_trip() -> None:
    m = _manifest()
    data = m.to_json()
    assert b"\n  " in data  # indented for humans
    plain = json.loads(data)
    assert plain["format"] == "digits-dataset/1" and plain["version"] == 1
    assert plain["stages"]["train_db"]["shards"][1] == {
        "key": "train_db/shard-00001.lmdb",
        "count": 3,
    }
    assert Manifest.from_json(data) == m
    assert Manifest(job_id="x").format == dataset.FORMAT
    with pytest.raises(ValueError, match="format"):
        Manifest.from_json(json.dumps({**plain, "format": "other/2"}))
    with pytest.raises(ValueError, match="not a dataset manifest"):
        Manifest.from_json(b"{}")


# ---------------------------------------------------------------- open / inspect


def _stage_samples() -> dict[str, list[tuple[np.ndarray, int]]]:
    train = [(_gradient(6, 5, 3) + i, [0, 1, 0, 2, 0, 1, 2][i]) for i in range(7)]
    val = [(_gradient(6, 5, 3) * 2, 0), (_gradient(6, 5, 3) // 2, 2)]
    return {"train_db": train, "val_db": val}


def _build(staging: Path) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Write the shards and mean of _manifest() the way the shard workers do."""
    samples = _stage_samples()
    acc = MeanAccumulator()
    m = _manifest()
    for stage, info in m.stages.items():
        rows = iter(samples[stage])
        for shard in info.shards:
            with ShardWriter(staging / shard.key) as w:
                for _ in range(shard.count):
                    f, label = next(rows)
                    w.put(f, label)
                    if stage == "train_db":
                        acc.add(f)
    (staging / "mean.npy").write_bytes(mean_npy_bytes(acc.mean()))
    (staging / "mean.png").write_bytes(mean_png_bytes(acc.mean()))
    (staging / "manifest.json").write_bytes(m.to_json())
    return samples


async def _upload(staging: Path, store: Store, prefix: str) -> None:
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        await store.put_file(f"{prefix}/{path.relative_to(staging).as_posix()}", path)


def _check(ds: dataset.Dataset, samples: dict[str, list[tuple[np.ndarray, int]]]) -> None:
    assert ds.labels == ["cat", "dog", "bird"] and ds.stages == ["train_db", "val_db"]
    assert ds.count("train_db") == 7 and ds.count("val_db") == 2
    assert [p.name for p in ds.shard_paths("train_db")] == ["shard-00000.lmdb", "shard-00001.lmdb"]
    for stage, want in samples.items():
        got = list(ds.samples(stage))
        assert [label for _, label in got] == [label for _, label in want]
        for (g, _), (w, _) in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert len(list(ds)) == 7
    mean = ds.mean()
    assert mean is not None and mean.dtype == np.float32 and mean.shape == (6, 5, 3)
    np.testing.assert_allclose(mean, np.mean([f for f, _ in samples["train_db"]], axis=0))
    with pytest.raises(KeyError, match="test_db"):
        ds.count("test_db")


async def test_open_file_store(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    samples = _build(staging)
    store = FileStore(tmp_path / "store")
    await _upload(staging, store, "datasets/job1")
    url = store.url("datasets/job1")
    assert url.startswith("file:///")
    for form in (url, url + "/", url + "/manifest.json", str(tmp_path / "store/datasets/job1")):
        ds = dataset.open(form)
        assert ds.root == tmp_path / "store" / "datasets" / "job1"
        _check(ds, samples)
    assert "train_db=7" in repr(ds)
    text = dataset.inspect(url)
    for part in ["job1", "image-classification", "6x5x3 uint8, png", "mean.npy, mean.png"]:
        assert part in text
    assert "labels    3: cat, dog, bird" in text
    assert "2023-11-14 22:13:20 UTC" in text
    lines = text.splitlines()
    assert [ln.split() for ln in lines if ln.startswith(("train_db", "val_db"))] == [
        ["train_db", "7", "2", "2"],
        ["val_db", "2", "0", "1"],
    ]
    assert ["0", "cat", "3", "1"] in [ln.split() for ln in lines]
    assert ["1", "dog", "2", "0"] in [ln.split() for ln in lines]


def test_open_without_mean_or_labels(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with ShardWriter(root / shard_key("train_db", 0)) as w:
        w.put(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), "none")
    m = Manifest(
        job_id="reg",
        extension="generic",
        feature_shape=[2, 2, 1],
        feature_dtype="float32",
        encoding="none",
        stages={"train_db": StageInfo([ShardInfo(shard_key("train_db", 0), 1)], 1)},
    )
    (root / "manifest.json").write_bytes(m.to_json())
    ds = dataset.open(root.as_uri())
    assert ds.mean() is None and ds.labels == []
    ((feature, label),) = list(ds.samples())
    assert feature.shape == (2, 2, 1) and isinstance(label, np.ndarray)
    text = dataset.inspect(str(root))
    assert "mean      none" in text and "labels    0" in text and "histogram" not in text


def test_open_rejects_escaping_keys(tmp_path: Path) -> None:
    m = Manifest(job_id="bad", stages={"train_db": StageInfo([ShardInfo("../../etc/x", 1)], 1)})
    (tmp_path / "manifest.json").write_bytes(m.to_json())
    with pytest.raises(ValueError, match="relative path"):
        list(dataset.open(str(tmp_path)).samples())


# ---------------------------------------------------------------- S3 (a real moto server)


@pytest.fixture
def s3_dataset(moto_url: str, tmp_path: Path) -> tuple[str, dict]:
    """A dataset uploaded under s3://<fresh bucket>/pre/datasets/job1."""
    samples = _build(tmp_path / "staging")
    bucket = f"digits-{uuid.uuid4().hex[:12]}"

    async def setup() -> None:
        session = get_session()
        kw = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        async with session.create_client("s3", "us-east-1", endpoint_url=moto_url, **kw) as s3:
            await s3.create_bucket(Bucket=bucket)
        async with S3Store(bucket, "pre", endpoint_url=moto_url, **CREDS) as store:
            await _upload(tmp_path / "staging", store, "datasets/job1")

    asyncio.run(setup())
    return f"s3://{bucket}/pre/datasets/job1", samples


def test_open_s3(s3_dataset: tuple[str, dict], moto_url: str, tmp_path: Path) -> None:
    url, samples = s3_dataset
    cache = tmp_path / "cache"
    ds = dataset.open(url, cache, endpoint_url=moto_url, **CREDS)
    assert ds.root == cache and ds.url == url
    _check(ds, samples)
    assert (cache / "manifest.json").is_file() and (cache / "mean.png").is_file()
    shard = cache / "train_db" / "shard-00001.lmdb"
    stamp = shard.stat().st_mtime_ns
    _check(dataset.open(url + "/manifest.json", cache, endpoint_url=moto_url, **CREDS), samples)
    assert shard.stat().st_mtime_ns == stamp  # served from the cache
    os.replace(cache / "val_db" / "shard-00000.lmdb", shard)  # a stale shard: wrong count
    _check(dataset.open(url, cache, endpoint_url=moto_url, **CREDS), samples)
    text = dataset.inspect(url, endpoint_url=moto_url, **CREDS)
    assert "job1" in text and "train_db" in text


def test_open_s3_default_cache(
    s3_dataset: tuple[str, dict], moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    url, samples = s3_dataset
    ds = dataset.open(url, endpoint_url=moto_url, **CREDS)
    assert ds.root == tmp_path / "home" / ".cache" / "digits" / "datasets" / "job1"
    _check(ds, samples)


async def test_open_s3_inside_event_loop(
    s3_dataset: tuple[str, dict], moto_url: str, tmp_path: Path
) -> None:
    url, samples = s3_dataset
    _check(dataset.open(url, tmp_path / "c", endpoint_url=moto_url, **CREDS), samples)
