"""Shard encoding: chunks in a pool streamed into one LMDB file in order; slots by shard age."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from digits.dataset import ShardReader, ShardWriter
from ingest_service.finalize import merge_chunks
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
