"""The dataset behind a model, as inference reads it: opened from the store, shards shared."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from digits import dataset as datasets
from digits.store import StoreError
from view_service.models import Deps, InferenceError, LoadedModel

_shards: dict[str, tuple[datasets.ShardReader, int]] = {}  # LMDB opens a file once a process
_shards_lock = threading.Lock()


def shard_samples(path: Path) -> Iterator[bytes]:
    """The encoded samples of a shard, its reader shared with other requests."""
    with _shards_lock:
        reader, users = _shards.get(str(path)) or (datasets.ShardReader(path), 0)
        _shards[str(path)] = (reader, users + 1)
    try:
        yield from reader.raw()  # py-lmdb transactions may move between threads
    finally:
        with _shards_lock:
            reader, users = _shards.pop(str(path))
            if users > 1:
                _shards[str(path)] = (reader, users - 1)
            else:
                reader.close()


async def model_dataset(deps: Deps, model: LoadedModel, stage: str) -> datasets.Dataset:
    """The model's dataset (a local copy), checked to have samples in ``stage``."""
    url = deps.store.url(f"datasets/{model.dataset_id or '-'}/manifest.json")
    cache = deps.work_dir / "datasets" / (model.dataset_id or "-")
    kw = {k: getattr(deps.store, k, None) for k in ("endpoint_url", "region")}  # as the store's
    try:
        ds = await asyncio.to_thread(datasets.open, url, cache, **kw)
    except (OSError, ValueError, StoreError) as exc:
        raise InferenceError(f"model {model.job_id}: cannot read its dataset: {exc}") from None
    if stage not in ds.stages or not ds.count(stage):
        raise InferenceError(f"dataset {model.dataset_id} has no {stage} samples")
    return ds
