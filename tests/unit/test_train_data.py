"""The training input pipeline: addressing, shuffling, mean, crops, augmentation, Keras fit."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from digits import dataset
from digits.dataset import (
    Manifest,
    ShardInfo,
    ShardReader,
    ShardWriter,
    StageInfo,
    mean_npy_bytes,
    shard_key,
)
from digits.models.augment import Augment
from train_service.data import ShardedDataset, input_shape, value_range

H, W = 10, 12
SHARDS = {"train_db": [(0, 50, "png"), (50, 30, "none")], "val_db": [(100, 7, "png")]}


def _image(index: int) -> np.ndarray:
    """Channel 0 is the sample index, channel 1 the row * 20, channel 2 the column * 20."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.full((H, W), index), y * 20, x * 20], -1).astype(np.uint8)


def _write(root: Path, shards: dict, feature, label, shape: list[int], mean: bool) -> None:
    stages, acc = {}, []
    for stage, specs in shards.items():
        infos = []
        for n, (first, count, encoding) in enumerate(specs):
            with ShardWriter(root / shard_key(stage, n)) as w:
                for i in range(first, first + count):
                    w.put(feature(i), label(i), encoding)
                    acc += [feature(i)] if stage == "train_db" else []
            infos.append(ShardInfo(shard_key(stage, n), count))
        stages[stage] = StageInfo(infos, sum(c for _, c, _ in specs))
    m = Manifest(job_id="j", labels=list("abcde"), feature_shape=shape, stages=stages)
    if mean:
        avg = np.mean(np.stack(acc).astype(np.float64), axis=0)
        (root / "mean.npy").write_bytes(mean_npy_bytes(avg))
        m.mean = {"npy": "mean.npy"}
    (root / "manifest.json").write_bytes(m.to_json())


def classification_set(root: Path) -> dataset.Dataset:
    """80 train samples in 2 shards (png, none) and 7 val samples, with a mean image."""
    _write(root, SHARDS, _image, lambda i: i % 5, [H, W, 3], mean=True)
    return dataset.open(str(root))


def segmentation_set(root: Path, count: int) -> dataset.Dataset:
    """``count`` grey 8x6 images whose mask is pixel value // 10."""

    def feature(i: int) -> np.ndarray:
        return ((np.arange(48).reshape(8, 6) + i) % 50 * 5).astype(np.uint8)

    shards = {"train_db": [(0, count, "png")]}
    _write(root, shards, feature, lambda i: feature(i) // 10, [8, 6, 1], mean=False)
    return dataset.open(str(root))


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    """80 train samples in 2 shards (png, none) and 7 val samples, with a mean image."""
    return classification_set(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    """12 grey 8x6 images whose mask is pixel value // 10."""
    return segmentation_set(tmp_path_factory.mktemp("seg"), 12)


def _ids(x: np.ndarray) -> list[int]:
    return [int(v) for v in np.rint(x[:, 0, 0, 0])]


def _epoch(sd: ShardedDataset) -> list[int]:
    return [i for b in range(len(sd)) for i in _ids(sd[b][0])]


# ---------------------------------------------------------------- batching and order


def test_len_and_batch_shapes(ds: dataset.Dataset) -> None:
    train = ShardedDataset(ds, "train_db", 32, decode_threads=2)
    assert len(train) == 2 and train.count == 80  # training drops the partial batch
    x, y = train[1]
    assert x.shape == (32, H, W, 3) and x.dtype == np.float32
    assert y.shape == (32,) and y.dtype == np.int32
    assert np.array_equal(y, np.array(_ids(x)) % 5)
    val = ShardedDataset(ds, "train_db", 32, training=False)
    assert len(val) == 3 and val[2][0].shape == (16, H, W, 3)
    assert len(ShardedDataset(ds, "val_db", 32)) == 1  # fewer samples than a batch: one batch
    assert ShardedDataset(ds, "val_db", 32)[0][0].shape[0] == 7
    with pytest.raises(IndexError):
        val[3]
    assert val.input_shape == input_shape(ds) == (H, W, 3)
    assert input_shape(ds, 8) == (8, 8, 3)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_once_per_epoch(ds: dataset.Dataset, shuffle: bool) -> None:
    sd = ShardedDataset(ds, "train_db", 7, shuffle=shuffle, training=False, seed=5)
    for _ in range(2):
        seen = _epoch(sd)
        assert sorted(seen) == list(range(80))
        assert (seen == list(range(80))) is not shuffle
        sd.on_epoch_end()
    val = ShardedDataset(ds, "val_db", 3, shuffle=shuffle, training=False)
    assert sorted(_epoch(val)) == list(range(100, 107))


def test_epochs_differ_and_seeds_reproduce(ds: dataset.Dataset) -> None:
    a = ShardedDataset(ds, "train_db", 16, seed=3)
    b = ShardedDataset(ds, "train_db", 16, seed=3)
    first = _epoch(a)
    assert first == _epoch(b) and sorted(first) == list(range(80))
    a.on_epoch_end()
    second = _epoch(a)
    assert a.epoch == 1 and second != first and sorted(second) == list(range(80))
    b.set_epoch(1)
    assert _epoch(b) == second
    assert _epoch(ShardedDataset(ds, "train_db", 16, seed=4)) != first


# ---------------------------------------------------------------- mean, scale, crop


def test_mean_modes_and_scale(ds: dataset.Dataset) -> None:
    images = np.stack([_image(i) for i in range(8)]).astype(np.float32)
    mean = ds.mean()
    assert mean is not None
    kw = {"shuffle": False, "training": False}
    x, _ = ShardedDataset(ds, "train_db", 8, mean="none", **kw)[0]
    np.testing.assert_array_equal(x, images)
    x, _ = ShardedDataset(ds, "train_db", 8, mean="image", **kw)[0]
    np.testing.assert_allclose(x, images - mean, atol=1e-4)
    pixel = ShardedDataset(ds, "train_db", 8, mean="pixel", **kw)
    assert pixel.mean_array is not None and pixel.mean_array.shape == (3,)
    np.testing.assert_allclose(pixel.mean_array, mean.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(pixel[0][0], images - mean.mean(axis=(0, 1)), atol=1e-4)
    x, _ = ShardedDataset(ds, "train_db", 8, mean="image", scale=1 / 255, **kw)[0]
    np.testing.assert_allclose(x, (images - mean) / 255, atol=1e-6)


def test_random_and_center_crops(ds: dataset.Dataset) -> None:
    mean = ds.mean()
    assert mean is not None
    sd = ShardedDataset(ds, "train_db", 40, crop_size=8, seed=1)
    x, _ = sd[0]
    assert x.shape == (40, 8, 8, 3) and sd.input_shape == (8, 8, 3)
    offsets = [(int(r) // 20, int(c) // 20) for r, c in x[:, 0, 0, 1:]]
    for img, i, (a, b) in zip(x, _ids(x), offsets, strict=True):
        np.testing.assert_array_equal(img, _image(i)[a : a + 8, b : b + 8])
    assert len(set(offsets)) > 5 and {a for a, _ in offsets} == {0, 1, 2}
    # DIGITS subtracts the full-size mean image first, then crops
    centred, _ = ShardedDataset(ds, "train_db", 40, crop_size=8, seed=1, mean="image")[0]
    want = np.stack(
        [img - mean[a : a + 8, b : b + 8] for img, (a, b) in zip(x, offsets, strict=True)]
    )
    np.testing.assert_allclose(centred, want, atol=1e-4)
    centre = ShardedDataset(ds, "train_db", 40, crop_size=8, training=False)
    x, _ = centre[0]
    assert x.shape == (40, 8, 8, 3)
    rows, cols = np.mgrid[1:9, 2:10] * 20  # centred: offsets (10 - 8) // 2 and (12 - 8) // 2
    np.testing.assert_array_equal(x[..., 1], np.broadcast_to(rows, (40, 8, 8)))
    np.testing.assert_array_equal(x[..., 2], np.broadcast_to(cols, (40, 8, 8)))
    with pytest.raises(ValueError, match="crop_size 11"):
        ShardedDataset(ds, "train_db", 4, crop_size=11)


# ---------------------------------------------------------------- augmentation


def test_augment_only_when_training(ds: dataset.Dataset) -> None:
    aug = Augment(flip="fliplr", noise=0.1)
    kw = {"shuffle": False, "mean": "image"}
    plain = ShardedDataset(ds, "train_db", 16, training=False, **kw)[0][0]
    np.testing.assert_array_equal(
        ShardedDataset(ds, "train_db", 16, training=False, augment=aug, **kw)[0][0], plain
    )
    trained = ShardedDataset(ds, "train_db", 16, augment=aug, **kw)[0][0]
    assert trained.shape == plain.shape and not np.allclose(trained, plain)


# ---------------------------------------------------------------- labels, threads, processes


def test_labels_and_num_classes(ds: dataset.Dataset) -> None:
    _, y = ShardedDataset(ds, "train_db", 80, shuffle=False, num_classes=5, training=False)[0]
    assert y.dtype == np.int32 and y.tolist() == [i % 5 for i in range(80)]
    with pytest.raises(ValueError, match="label 4, outside"):
        ShardedDataset(ds, "train_db", 80, num_classes=4)[0]


def test_segmentation_masks(seg: dataset.Dataset) -> None:
    aug = Augment(flip="fliplrud", quad_rot="rot180")
    sd = ShardedDataset(seg, "train_db", 6, crop_size=4, augment=aug, seed=2)
    for b in range(len(sd)):
        x, y = sd[b]
        assert x.shape == (6, 4, 4, 1) and y.shape == (6, 4, 4) and y.dtype == np.int32
        np.testing.assert_array_equal(y, np.rint(x[..., 0]).astype(np.int32) // 10)
    x, y = ShardedDataset(seg, "train_db", 12, crop_size=4, training=False)[0]
    np.testing.assert_array_equal(y, np.rint(x[..., 0]).astype(np.int32) // 10)


def test_threads_give_the_same_batches(ds: dataset.Dataset) -> None:
    kw = {"crop_size": 8, "mean": "pixel", "augment": Augment(flip="fliplr", rot=10), "seed": 9}
    serial = ShardedDataset(ds, "train_db", 16, decode_threads=1, **kw)
    threaded = ShardedDataset(ds, "train_db", 16, decode_threads=4, **kw)
    with serial, threaded:
        for b in (0, 3, 4):
            for got, want in zip(threaded[b], serial[b], strict=True):
                np.testing.assert_array_equal(got, want)


def test_pickles(ds: dataset.Dataset) -> None:
    sd = ShardedDataset(ds, "train_db", 8, crop_size=8, seed=1, workers=2, max_queue_size=3)
    want = sd[2]
    sd.on_epoch_end()
    copy = pickle.loads(pickle.dumps(sd))
    assert copy.epoch == 1 and copy.workers == 2 and copy.max_queue_size == 3
    copy.set_epoch(0)
    for got, exp in zip(copy[2], want, strict=True):
        np.testing.assert_array_equal(got, exp)
    copy.close()
    sd.close()


def test_shards_open_once_per_process(ds: dataset.Dataset) -> None:
    a = ShardedDataset(ds, "train_db", 8, shuffle=False)
    b = ShardedDataset(ds, "train_db", 8, shuffle=False)
    a[0], b[0], a[9]
    assert a._reader(0) is b._reader(0) and a._reader(1) is not a._reader(0)
    a.close()
    np.testing.assert_array_equal(b[0][0], np.stack([_image(i) for i in range(8)]))
    del b  # the last holder gone: the files are closed and can be opened again
    for path in ds.shard_paths("train_db"):
        with ShardReader(path) as reader:
            assert len(reader) in (50, 30)


def test_fork_reopens_shards(ds: dataset.Dataset) -> None:
    sd = ShardedDataset(ds, "train_db", 8, seed=2, decode_threads=2)
    want = sd[3][0]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: inherited LMDB handles and threads are replaced
        code = 1
        try:
            code = 0 if np.array_equal(sd[3][0], want) and sd[1][0].shape[0] == 8 else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.close(r)
    os.waitpid(pid, 0)
    np.testing.assert_array_equal(sd[3][0], want)  # the parent's handles still work
    sd.close()


def test_rejects_bad_options(ds: dataset.Dataset, seg: dataset.Dataset) -> None:
    with pytest.raises(ValueError, match="has no mean"):
        ShardedDataset(seg, "train_db", 4, mean="image")
    with pytest.raises(ValueError, match="mean must be"):
        ShardedDataset(ds, "train_db", 4, mean="median")
    with pytest.raises(ValueError, match="batch_size"):
        ShardedDataset(ds, "train_db", 0)
    with pytest.raises(KeyError, match="test_db"):
        ShardedDataset(ds, "test_db", 4)
    assert value_range("uint8") == 255 and value_range("uint16") == 65535
    assert value_range("float32") == 1.0


def test_keras_fit_one_epoch(ds: dataset.Dataset) -> None:
    import keras

    train = ShardedDataset(
        ds,
        "train_db",
        16,
        mean="image",
        scale=1 / 255,
        crop_size=8,
        workers=2,
        seed=0,
        augment=Augment(flip="fliplr"),
    )
    val = ShardedDataset(ds, "val_db", 4, mean="image", scale=1 / 255, crop_size=8, training=False)
    model = keras.Sequential(
        [
            keras.Input(train.input_shape),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "val_accuracy" in history.history
    assert train.epoch == 2  # Keras calls on_epoch_end before the first epoch, too
