"""view_service.models: training's preprocessing, probabilities, the batcher, the model cache."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image

from digits import dataset
from digits.dataset import Manifest, ShardInfo, ShardWriter, StageInfo, mean_npy_bytes, shard_key
from digits.jobs import Job, JobNotFound
from digits.store import FileStore
from digits.utils.image import ImageError, load_image, resize_image
from train_service.data import ShardedDataset
from view_service import models
from view_service.models import (
    OVERHEAD_BYTES,
    Batcher,
    InferenceError,
    LoadedModel,
    ModelCache,
    Resize,
    softmax,
)

H, W = 10, 12


class FakeModel:
    """Logits = the first pixels of each input; records the batch sizes it was called with."""

    def __init__(self, shape: tuple[int, int, int], classes: int = 3, delay: float = 0.0):
        self.input_shape = (None, *shape)
        self.classes, self.delay = classes, delay
        self.batches: list[int] = []
        self.fail = False

    def count_params(self) -> int:
        return 1000

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        assert training is False
        if self.fail:
            raise RuntimeError("model exploded")
        time.sleep(self.delay)
        self.batches.append(len(x))
        return x.reshape(len(x), -1)[:, : self.classes] * 10


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _feature(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.full((H, W), i * 9), y * 20, x * 20], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    """A 3-channel 10x12 dataset: 20 train and 7 val samples, with a mean image."""
    root = tmp_path_factory.mktemp("ds")
    stages, train = {}, []
    for stage, first, count in (("train_db", 0, 20), ("val_db", 20, 7)):
        with ShardWriter(root / shard_key(stage, 0)) as w:
            for i in range(first, first + count):
                w.put(_feature(i), i % 3)
                train += [_feature(i)] if stage == "train_db" else []
        stages[stage] = StageInfo([ShardInfo(shard_key(stage, 0), count)], count)
    (root / "mean.npy").write_bytes(mean_npy_bytes(np.mean(np.stack(train), axis=0)))
    m = Manifest(job_id="d", labels=list("abc"), feature_shape=[H, W, 3], stages=stages)
    m.mean = {"npy": "mean.npy"}
    (root / "manifest.json").write_bytes(m.to_json())
    return dataset.open(str(root))


@pytest.mark.parametrize("mean", ["none", "image", "pixel"])
@pytest.mark.parametrize("crop", [None, 8])
def test_prepare_matches_the_training_pipeline(ds, mean, crop):
    sd = ShardedDataset(
        ds, "val_db", 7, shuffle=False, mean=mean, crop_size=crop, training=False, scale=1 / 255
    )
    x, _ = sd[0]
    side = crop or 0
    model = LoadedModel(
        FakeModel((side or H, side or W, 3)),
        resize=Resize(H, W, 3),
        mean=sd.mean_array,
        crop_size=crop,
        scale=1 / 255,
    )
    for i in range(7):  # the stored uint8 feature, as read by the training pipeline
        feature = sd.load(i)[0].astype(np.uint8)
        np.testing.assert_array_equal(model.prepare(feature), x[i])
    sd.close()


def test_preprocess_decodes_resizes_and_converts_like_ingest():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = png(rgb)
    mean = np.full((H, W, 1), 100.0, np.float32)
    model = LoadedModel(FakeModel((H, W, 1)), resize=Resize(H, W, 1), mean=mean, scale=0.5)
    expected = (resize_image(load_image(data, 1), H, W, 1, "squash").astype(np.float32) - 100) / 2
    x = model.preprocess(data)
    assert x.dtype == np.float32 and x.shape == (H, W, 1)
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ImageError, match="not an image"):
        model.preprocess(b"this is not a picture")
    with pytest.raises(ValueError, match="does not match"):
        model.predict(np.zeros((1, H, W, 3), np.float32))


def test_preprocess_fill_noise_is_the_same_for_the_same_image():
    model = LoadedModel(FakeModel((H, W, 3)), resize=Resize(H, W, 3, "fill"))
    data = png(np.full((5, 30, 3), 200, np.uint8))
    np.testing.assert_array_equal(model.preprocess(data), model.preprocess(data))


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(InferenceError, match="takes inputs of shape"):
        LoadedModel(FakeModel((8, 8, 3)), resize=Resize(H, W, 3))
    with pytest.raises(InferenceError, match="mean of shape"):
        LoadedModel(FakeModel((H, W, 3)), mean=np.zeros((4, 4, 3)))
    with pytest.raises(InferenceError, match="crop_size 20"):
        LoadedModel(FakeModel((20, 20, 3)), resize=Resize(H, W, 3), crop_size=20)


def test_predict_gives_probabilities_of_logits():
    model = LoadedModel(FakeModel((2, 2, 1)), scale=1.0)
    x = np.array([[1.0, 2.0, 3.0, 0.0], [500.0, 0.0, -500.0, 0.0]], np.float32).reshape(2, 2, 2, 1)
    probs = model.predict(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert list(np.argmax(probs, axis=1)) == [2, 0]
    np.testing.assert_allclose(probs[0], softmax(np.array([10.0, 20.0, 30.0])), rtol=1e-6)
    assert model.calls == 1


def test_a_model_that_ends_in_softmax_is_not_softmaxed_twice():
    import keras

    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    net = keras.Model(inputs, outputs)
    model = LoadedModel(net, scale=1.0)
    x = np.random.default_rng(1).normal(size=(4, 2, 2, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), net.predict_on_batch(x), rtol=1e-6)


async def test_batcher_merges_concurrent_requests_up_to_max_batch():
    fake = FakeModel((2, 2, 1), delay=0.01)
    model = LoadedModel(fake, scale=1.0)
    xs = np.random.default_rng(2).normal(size=(10, 2, 2, 1)).astype(np.float32)
    batcher = Batcher(max_batch=4, max_delay=0.05)
    results = await asyncio.gather(*(batcher.predict(model, x) for x in xs))
    # The first runs at once; the others gather while it runs, four at a time.
    assert fake.batches == [1, 4, 4, 1] and model.calls == 4
    for x, p in zip(xs, results, strict=True):
        np.testing.assert_allclose(p, model.predict(x[None])[0], rtol=1e-6)


async def test_a_lone_request_runs_at_once_but_waits_for_peers_after_a_bigger_batch():
    fake = FakeModel((2, 2, 1))
    model = LoadedModel(fake, scale=1.0)
    x = np.ones((2, 2, 1), np.float32)
    slow = Batcher(max_batch=64, max_delay=60.0)
    await asyncio.wait_for(slow.predict(model, x), 30)  # long before max_delay
    batcher = Batcher(max_batch=64, max_delay=0.05)
    await asyncio.gather(*(batcher.predict(model, x) for _ in range(3)))
    started = time.perf_counter()
    await batcher.predict(model, x)  # right after a batch of two: its peers may be coming
    assert time.perf_counter() - started >= 0.04
    await asyncio.sleep(0.06)
    await asyncio.wait_for(slow.predict(model, x), 30)
    assert fake.batches == [1, 1, 2, 1, 1]
    with pytest.raises(ValueError, match="is not"):
        await batcher.predict(model, np.ones((3, 3, 1), np.float32))


async def test_batcher_decodes_encoded_images_in_the_batch_and_fails_only_the_bad_one():
    fake = FakeModel((2, 2, 1), delay=0.01)
    model = LoadedModel(fake, scale=1.0)
    batcher = Batcher(max_batch=8, max_delay=0.05)
    first = asyncio.ensure_future(batcher.predict(model, np.zeros((2, 2, 1), np.float32)))
    await asyncio.sleep(0)  # it runs; the next three gather behind it
    images = [png(np.full((2, 2), v, np.uint8)) for v in (3, 5)]
    outcomes = await asyncio.gather(
        *(batcher.predict(model, i) for i in (images[0], b"not an image", images[1])),
        return_exceptions=True,
    )
    await first
    assert fake.batches == [1, 2] and list(batcher.batches) == [1, 3]  # the bad one: no input
    assert isinstance(outcomes[1], ImageError) and "not an image" in str(outcomes[1])
    for image, probs in zip(images, (outcomes[0], outcomes[2]), strict=True):
        np.testing.assert_allclose(probs, model.predict(model.preprocess(image)[None])[0])


async def test_batcher_gives_every_waiter_the_error_and_survives_a_cancelled_one():
    fake = FakeModel((2, 2, 1))
    model = LoadedModel(fake, scale=1.0)
    batcher = Batcher(max_batch=8, max_delay=0.02)
    fake.fail = True
    outcomes = await asyncio.gather(
        *(batcher.predict(model, np.ones((2, 2, 1), np.float32)) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    fake.fail = False
    # Right after a batch of two, a lone request waits for peers: one that gives up is dropped.
    gone = asyncio.ensure_future(batcher.predict(model, np.zeros((2, 2, 1), np.float32)))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    kept = asyncio.ensure_future(batcher.predict(model, np.ones((2, 2, 1), np.float32)))
    assert (await kept).shape == (3,)
    assert fake.batches == [1]


class FakeJobs:
    """JobStore.get over a dict."""

    def __init__(self, *jobs: Job) -> None:
        self.jobs = {j.id: j for j in jobs}

    async def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]


def _save_tiny(path: Path, seed: int, shape: tuple[int, int, int] = (4, 4, 1)) -> int:
    """A Flatten-Dense(3) model saved as .keras; its parameter count."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    net.save(path)
    return net.count_params()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Three snapshots of one tiny model under models/m/snapshots in a store folder."""
    root = tmp_path_factory.mktemp("store")
    params = [_save_tiny(root / f"models/m/snapshots/epoch-{e}.keras", e) for e in (1, 2, 3)]
    return root, params[0]


DATASET = Job(id="d", type="dataset", name="d", form={"resize_height": 6, "resize_width": 6})
MODEL = Job(
    id="m",
    type="model",
    name="m",
    form={"use_mean": "none"},
    extra={"snapshots": [1.0, 2.0, 3.0]},
)
FRESH = Job(id="f", type="model", name="f")


def _cache(tiny, tmp_path: Path, **kw) -> ModelCache:
    return ModelCache(FileStore(tiny[0]), FakeJobs(DATASET, MODEL, FRESH), tmp_path, **kw)


async def test_cache_picks_the_last_snapshot_and_loads_once(tiny, tmp_path):
    cache = _cache(tiny, tmp_path)
    latest = await cache.get("m", -1)
    assert latest.epoch == 3.0 and latest.resize == Resize(4, 4, 1, "squash")
    assert latest.mean is None and latest.labels == []
    models = await asyncio.gather(*(cache.get("m", 2) for _ in range(5)))
    assert all(m is models[0] for m in models) and models[0].epoch == 2.0
    assert cache.loads == 2 and len(cache) == 2 and await cache.get("m", 3.0) is latest
    x = np.ones((2, 4, 4, 1), np.float32)
    assert not np.allclose(latest.predict(x), models[0].predict(x))


class SlowJobs(FakeJobs):
    """FakeJobs whose reads take a moment, counted."""

    reads = 0

    async def get(self, job_id: str) -> Job:
        self.reads += 1
        await asyncio.sleep(0.01)
        return await super().get(job_id)


async def test_concurrent_lookups_share_a_read_and_a_given_epoch_trusts_a_recent_one(
    tiny, tmp_path, monkeypatch
):
    jobs = SlowJobs(DATASET, MODEL)
    cache = ModelCache(FileStore(tiny[0]), jobs, tmp_path)
    await asyncio.gather(*(cache.resolve("m", -1) for _ in range(10)))
    assert jobs.reads == 1
    assert await cache.resolve("m", 2) == (MODEL, 2.0) and jobs.reads == 1  # read a moment ago
    await cache.resolve("m", -1)  # the latest snapshot: always read
    assert jobs.reads == 2
    with pytest.raises(InferenceError, match="no snapshot at epoch 7"):
        await cache.resolve("m", 7)  # not listed: read again, in case it is new
    assert jobs.reads == 3
    monkeypatch.setattr(models, "RECORD_TTL_S", 0.0)
    del jobs.jobs["m"]
    with pytest.raises(InferenceError, match="no job with id 'm'"):
        await cache.resolve("m", 2)
    assert jobs.reads == 4


async def test_cache_errors_name_the_problem(tiny, tmp_path):
    cache = _cache(tiny, tmp_path)
    with pytest.raises(InferenceError, match="no job with id 'nope'"):
        await cache.get("nope")
    with pytest.raises(InferenceError, match="job d is a dataset, not a model"):
        await cache.get("d")
    with pytest.raises(InferenceError, match="model f has no snapshot yet"):
        await cache.get("f")
    with pytest.raises(InferenceError) as err:
        await cache.get("m", 7)
    assert str(err.value) == "model m has no snapshot at epoch 7; snapshots: 1, 2, 3"
    cache.jobs.jobs["g"] = Job(id="g", type="model", name="g", extra={"snapshots": [1]})
    with pytest.raises(InferenceError, match="model g subtracts a mean, but dataset \\? has no"):
        await cache.get("g")
    cache.jobs.jobs["g"] = msgspec.structs.replace(cache.jobs.jobs["g"], form={"use_mean": "none"})
    with pytest.raises(InferenceError, match="snapshot file epoch-1.keras is missing"):
        await cache.get("g")
    assert len(cache) == 0 and not cache._loading


async def test_cache_evicts_the_least_recently_used_beyond_max_bytes(tiny, tmp_path):
    one = tiny[1] * 4 + OVERHEAD_BYTES
    cache = _cache(tiny, tmp_path, max_bytes=int(one * 2.5))
    await cache.get("m", 1)
    await cache.get("m", 2)
    await cache.get("m", 1)  # now 2 is the least recently used
    await cache.get("m", 3)
    assert ("m", 1.0) in cache and ("m", 3.0) in cache and ("m", 2.0) not in cache
    assert cache.nbytes == 2 * one and cache.loads == 3
    await cache.get("m", 2)
    assert ("m", 1.0) not in cache and cache.loads == 4 and len(cache) == 2


async def test_cache_preprocessing_comes_from_info_dataset_form_and_mean(tiny, tmp_path):
    root = tiny[0]
    _save_tiny(root / "models/p/snapshots/epoch-0.5.keras", 5)
    mean = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
    (root / "datasets/d").mkdir(parents=True, exist_ok=True)
    (root / "datasets/d/mean.npy").write_bytes(mean_npy_bytes(mean))
    info = {"dataset_id": "d", "labels": ["x", "y", "z"], "mean": "pixel", "crop_size": 4}
    (root / "models/p/info.json").write_text(json.dumps({**info, "scale": 0.5}))
    job = Job(id="p", type="model", name="p", depends_on=["d"], extra={"snapshots": [0.5]})
    cache = ModelCache(FileStore(root), FakeJobs(DATASET, job), tmp_path)
    model = await cache.get("p")
    assert model.resize == Resize(6, 6, 1, "squash") and model.crop_size == 4
    assert model.labels == ["x", "y", "z"] and model.scale == 0.5 and model.dataset_id == "d"
    np.testing.assert_allclose(model.mean, [17.5])
    x = model.preprocess(png(np.full((12, 12), 117, np.uint8)))
    np.testing.assert_allclose(x, np.full((4, 4, 1), 49.75))
    assert model.calls == 0  # warming up is not counted


# In a child: freezing is for a process's life, and this one's objects are pytest's.
FROZEN_CHILD = """
import gc, json, sys, weakref
from view_service.models import keras_frozen

keras = keras_frozen()
frozen = gc.get_freeze_count()
keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(sys.argv[1])
loaded = keras.models.load_model(sys.argv[1], compile=False)
ref = weakref.ref(loaded)
del loaded
gc.collect()
print(json.dumps({
    "frozen": frozen,
    "unfrozen": len(gc.get_objects()),
    "frozen_after_a_load": gc.get_freeze_count(),
    "loaded_model_collected": ref() is None,
    "imported_once": keras_frozen() is keras,
}))
"""


def test_keras_is_imported_once_and_frozen_and_models_loaded_later_stay_collectable(tmp_path):
    """Before, each full collection walked TensorFlow's ~330,000 objects with the GIL held."""
    argv = [sys.executable, "-c", FROZEN_CHILD, str(tmp_path / "m.keras")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["frozen"] > 10 * seen["unfrozen"], seen  # what a collection walks is the rest
    assert seen["frozen_after_a_load"] <= seen["frozen"], "a model loaded later is not frozen"
    assert seen["loaded_model_collected"] and seen["imported_once"], seen
