"""The decoded-sample cache of the training pipeline, and shard readers shared by real path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from digits import dataset
from digits.dataset import Label
from digits.models.augment import Augment
from tests.unit.test_train_data import H, W, _image, classification_set, segmentation_set
from train_service.data import ShardedDataset

STORED = H * W * 3  # bytes of one decoded uint8 sample


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    """80 train samples in 2 shards (png, none) and 7 val samples, with a mean image."""
    return classification_set(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    """20 grey 8x6 images whose mask is pixel value // 10."""
    return segmentation_set(tmp_path_factory.mktemp("segcache"), 20)


class Counting(ShardedDataset):
    """A ShardedDataset that counts the samples it reads from the shards."""

    reads = 0

    def _read(self, index: int) -> tuple[np.ndarray, Label]:
        self.reads += 1
        return super()._read(index)


def _epochs(sd: ShardedDataset, n: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    out = []
    for _ in range(n):
        out.append([sd[b] for b in range(len(sd))])
        sd.on_epoch_end()
    return out


def _same(a: list, b: list) -> None:
    for batches_a, batches_b in zip(a, b, strict=True):
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


KINDS = {
    "whole_batches": {"mean": "image", "scale": 1 / 255},
    "augmented": {"crop_size": 8, "augment": Augment(flip="fliplrud", noise=0.1, hsv_use=True)},
}


@pytest.mark.parametrize("kind", KINDS)
def test_later_epochs_read_memory_and_match_streaming(ds: dataset.Dataset, kind: str) -> None:
    kw = {"seed": 3, "training": True, **KINDS[kind]}
    cached = Counting(ds, "train_db", 16, **kw)
    streamed = Counting(ds, "train_db", 16, cache_mb=0, **kw)
    assert cached.cache_bytes == 80 * STORED and streamed.cache_bytes == 0
    first = _epochs(cached, 1)
    assert cached.cached == 80 and cached.reads == 80, "the first epoch decodes each sample once"
    later = _epochs(cached, 2)
    assert cached.reads == 80, "later epochs read nothing from the shards"
    _same(first + later, _epochs(streamed, 3))  # shuffled and augmented afresh, as streamed
    assert streamed.cached == 0 and streamed.reads == 3 * 80
    assert not np.array_equal(first[0][0][0], later[0][0][0]), "each epoch reshuffles"
    cached.close()
    streamed.close()


def test_a_stage_over_the_budget_streams(ds: dataset.Dataset) -> None:
    need_mb = 80 * STORED / 2**20
    over = Counting(ds, "train_db", 16, cache_mb=need_mb * 0.99)
    fits = Counting(ds, "train_db", 16, cache_mb=need_mb)
    assert over.cache_bytes == 0 and fits.cache_bytes == 80 * STORED
    _epochs(over, 2)
    _epochs(fits, 2)
    assert over.reads == 1 + 2 * 80 and fits.reads == 80
    assert over.cached == 0 and fits.cached == 80
    over.close()
    fits.close()


def test_cached_samples_are_read_only_and_load_copies(ds: dataset.Dataset) -> None:
    sd = ShardedDataset(ds, "train_db", 8, shuffle=False)
    stored, _ = sd._decoded(5)
    assert not stored.flags.writeable
    x, _ = sd.load(5)
    x += 1  # the caller's copy
    np.testing.assert_array_equal(sd._decoded(5)[0], _image(5))
    sd.close()
    assert sd.cached == 1, "close drops what was cached, keeping the plan"


def test_masks_are_cached_with_their_images(seg: dataset.Dataset) -> None:
    kw = {"seed": 1, "crop_size": 4, "augment": Augment(flip="fliplr", rot=30)}
    cached = Counting(seg, "train_db", 4, **kw)
    assert cached.cache_bytes == 20 * 2 * 48  # feature and mask, uint8 8x6 each
    streamed = ShardedDataset(seg, "train_db", 4, cache_mb=0, **kw)
    _same(_epochs(cached, 3), _epochs(streamed, 3))
    assert cached.reads == 20
    cached.close()
    streamed.close()


def test_a_pickled_copy_starts_with_an_empty_cache(ds: dataset.Dataset) -> None:
    sd = ShardedDataset(ds, "train_db", 8, seed=4, crop_size=6)
    _epochs(sd, 1)
    copy = pickle.loads(pickle.dumps(sd))
    assert sd.cached == 80 and copy.cached == 1 and copy.cache_bytes == sd.cache_bytes
    _same(_epochs(copy, 1), _epochs(sd, 1))
    copy.close()
    sd.close()


def test_one_shard_file_under_two_paths_is_opened_once(ds: dataset.Dataset, tmp_path: Path) -> None:
    link = tmp_path / "link"
    os.symlink(ds.url if "://" not in ds.url else ds.url.split("://", 1)[1], link)
    a = ShardedDataset(ds, "train_db", 8, shuffle=False, cache_mb=0)
    b = ShardedDataset(dataset.open(str(link)), "train_db", 8, shuffle=False, cache_mb=0)
    assert a._reader(0) is b._reader(0)  # LMDB would refuse a second open ("already open")
    np.testing.assert_array_equal(a[0][0], b[0][0])
    a.close()
    b.close()
