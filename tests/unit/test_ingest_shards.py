"""Shard encoding: chunks in a pool streamed into one LMDB file in order; slots by shard age."""

from __future__ import annotations

import asyncio
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from digits.dataset import MeanAccumulator, ShardReader, ShardWriter
from ingest_service.finalize import merge_chunks, merged_mean_bytes
from ingest_service.shards import ShardEncoder, Slots

pytestmark = pytest.mark.timeout(60)


def _folder(root, count: int) -> list[list]:
    entries = []
    for i in range(count):
        path = root / f"c{i % 2}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 6), i % 256, np.uint8), "L").save(path)
        entries.append([str(path), i % 2])
    return entries


def _form(root) -> dict:
    return {
        "method": "folder",
        "folder_train": str(root),
        "data_roots": [str(root)],
        "resize_width": 6,
        "resize_height": 4,
        "resize_channels": 1,
    }


async def test_chunks_are_written_in_order_with_exact_stats(tmp_path):
    entries = _folder(tmp_path, 150)
    entries.insert(7, [str(tmp_path / "c0" / "missing.png"), 0])
    encoder = ShardEncoder(lambda: ThreadPoolExecutor(3), pool_size=3)

    async def never() -> bool:
        return False

    queued = encoder.claim()
    assert not encoder.room.is_set()  # a shard waits to reach the pool: take no other yet
    calls = []

    def on_queued() -> None:
        calls.append(encoder.slots.used)
        queued()

    try:
        assert encoder.chunk_size(len(entries)) == 16  # several chunks per process
        writer = ShardWriter(tmp_path / "shard.lmdb")
        call = ("image-classification", _form(tmp_path), "png", True)
        results = await encoder.encode(call, entries, writer, never, on_queued)
        writer.close()
    finally:
        encoder.close()
    assert len(calls) == 1 and encoder.room.is_set()  # the last chunk got its slot: room
    queued()  # more calls change nothing
    assert encoder.room.is_set() and encoder.slots.used == 0
    assert results is not None and all(not r.samples for r in results)
    stats = merge_chunks(results)
    assert (stats["entries"], stats["samples"], stats["skipped"]) == (150, 150, 1)
    assert "missing.png" in stats["reasons"][0]
    assert stats["histogram"] == {"0": 75, "1": 75}
    with ShardReader(tmp_path / "shard.lmdb") as reader:
        values = [int(feature[0, 0, 0]) for feature, _ in reader]
    assert values == [i % 256 for i in range(150)]


async def test_samples_spilled_through_files_by_processes_match_returned_ones(tmp_path):
    entries = _folder(tmp_path / "images", 100)
    form = {**_form(tmp_path / "images"), "data_roots": [str(tmp_path)]}
    call = ("image-classification", form, "png", True)
    spill = tmp_path / "spill"
    spill.mkdir()

    async def never() -> bool:
        return False

    shards = {}
    for name, factory, spill_dir in (
        ("returned", lambda: ThreadPoolExecutor(2), None),
        ("spilled", lambda: ProcessPoolExecutor(2), str(spill)),
    ):
        encoder = ShardEncoder(factory, pool_size=2)
        try:
            writer = ShardWriter(tmp_path / f"{name}.lmdb")
            results = await encoder.encode(call, entries, writer, never, spill_dir=spill_dir)
            writer.close()
        finally:
            encoder.close()
        assert results is not None and all(r.count and not r.samples for r in results)
        with ShardReader(tmp_path / f"{name}.lmdb") as reader:
            shards[name] = (list(reader.raw()), merge_chunks(results), results)
    assert shards["spilled"][0] == shards["returned"][0] and len(shards["spilled"][0]) == 100
    assert all(r.spill and r.spill.startswith(str(spill)) for r in shards["spilled"][2])
    assert not any(r.spill for r in shards["returned"][2])
    assert not list(spill.iterdir())  # each spill file is removed once written
    assert shards["spilled"][1]["histogram"] == shards["returned"][1]["histogram"]
    assert shards["spilled"][1]["histogram"] == {"0": 50, "1": 50}
    # The chunks' means crossed the process boundary as exact integer sums.
    mean = MeanAccumulator.from_bytes(merged_mean_bytes(shards["spilled"][2]))
    expected = np.mean([i % 256 for i in range(100)])
    assert mean.count == 100
    assert np.array_equal(mean.mean(), np.full((4, 6, 1), expected, np.float32))


def test_a_chunk_mean_pickles_as_its_exact_uint16_sum():
    acc = MeanAccumulator()
    for value in (255, 255, 1):
        acc.add(np.full((2, 3), value, np.uint8))
    total, count = acc.__getstate__()
    assert total.dtype == np.uint16 and count == 3
    copy = pickle.loads(pickle.dumps(acc))
    assert copy.sum.dtype == np.float64 and np.array_equal(copy.sum, np.full((2, 3, 1), 511.0))
    copy.add(np.full((2, 3), 2, np.uint8))  # it goes on summing after the trip
    assert copy.count == 4 and np.array_equal(copy.mean(), np.full((2, 3, 1), 128.25, np.float32))
    floats = MeanAccumulator()
    floats.add(np.full((2, 3), 0.5, np.float32))
    assert floats.__getstate__()[0].dtype == np.float64


async def test_a_stopped_shard_returns_none(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest_service.shards.CHECK_EVERY_S", 0.05)
    entries = _folder(tmp_path, 40)
    encoder = ShardEncoder(lambda: ThreadPoolExecutor(1), pool_size=1)
    busy = threading.Event()
    encoder.pool.submit(busy.wait, 30)  # the pool's one thread is taken: the shard waits
    asked = 0

    async def stopped() -> bool:
        nonlocal asked
        asked += 1
        return True

    try:
        writer = ShardWriter(tmp_path / "shard.lmdb")
        call = ("image-classification", _form(tmp_path), "png", False)
        assert await encoder.encode(call, entries, writer, stopped) is None
        writer.abort()
    finally:
        busy.set()
        encoder.close()
    assert asked == 1 and not (tmp_path / "shard.lmdb").exists()


async def test_slots_serve_the_oldest_shard_first():
    slots = Slots(1)
    order: list[str] = []
    await slots.acquire(0)

    async def take(name: str, priority: int) -> None:
        await slots.acquire(priority)
        order.append(name)
        slots.release()

    young = asyncio.ensure_future(take("young", 5))
    await asyncio.sleep(0)
    old = asyncio.ensure_future(take("old", 1))
    cancelled = asyncio.ensure_future(take("cancelled", 0))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(young, old)
    assert order == ["old", "young"]
    assert slots.used == 0
