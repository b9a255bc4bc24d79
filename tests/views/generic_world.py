"""Helpers for generic-model tests: tiny array-label datasets, model.create, plain RPC calls."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import msgpack
import nats
import numpy as np
from PIL import Image

from digits import jobs, subjects
from digits.dataset import Manifest, ShardInfo, ShardWriter, StageInfo, shard_key
from tests.integration.test_jobs import job_store

SEG_LABELS = ["background", "blob"]
SIZE = 32


def png(array: np.ndarray) -> bytes:
    """An HxW uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def blobs(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` noisy dark 32x32 images with a bright disk, and the disk as a 0/1 class map."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.integers(9, SIZE - 9, size=2)
        r = rng.integers(5, 9)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        image = rng.normal(40, 12, (SIZE, SIZE)) + mask * 150
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


def ramps(n: int, rng: np.random.Generator, size: int = 16) -> tuple[list, list]:
    """``n`` ramps ``128 + 14 (dx (x-c) + dy (y-c))`` and their gradients (dx, dy), float32."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images, labels = [], []
    for _ in range(n):
        dx, dy = rng.uniform(-1, 1, 2)
        image = 128 + 14 * (dx * xx + dy * yy)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        labels.append(np.array([dx, dy], np.float32))
    return images, labels


def write_dataset(
    root: Path, job_id: str, stages: dict[str, tuple[list, list]], labels: list[str]
) -> None:
    """A dataset in the store's layout: one shard per stage, manifest, no mean."""
    infos = {}
    for stage, (features, targets) in stages.items():
        with ShardWriter(root / shard_key(stage, 0)) as writer:
            for feature, target in zip(features, targets, strict=True):
                writer.put(feature, target)
        infos[stage] = StageInfo([ShardInfo(shard_key(stage, 0), len(features))], len(features))
    h, w = np.asarray(next(iter(stages.values()))[0][0]).shape[:2]
    manifest = Manifest(job_id=job_id, extension="image-generic-test", labels=labels, stages=infos)
    manifest.feature_shape = [int(h), int(w), 1]
    (root / "manifest.json").write_bytes(manifest.to_json())


async def dataset_job(nc, store_dir: Path, job_id: str, name: str, **fields) -> None:
    """A Done dataset job record pointing at the dataset written under ``store_dir``."""
    url = f"{store_dir.as_uri()}/datasets/{job_id}/manifest.json"
    store = await job_store(nc)
    await store.create(
        jobs.Job(
            id=job_id,
            type="dataset",
            name=name,
            status=jobs.DONE,
            extra={"manifest_url": url},
            **fields,
        )
    )


async def create_generic_model(nats_url: str, name: str, dataset_id: str, form: dict) -> None:
    """Publish model.create for a generic model (extension image-generic) with plain msgpack."""
    nc = await nats.connect(nats_url)
    try:
        command_id = uuid.uuid4().hex
        payload = {
            "type": "model.create",
            "event_id": command_id,
            "name": name,
            "dataset_id": dataset_id,
            "extension": "image-generic",
            "form": form,
        }
        await nc.jetstream().publish(
            subjects.CMD_MODEL_CREATE,
            msgpack.packb(payload),
            headers={"Nats-Msg-Id": f"create:{command_id}"},
        )
    finally:
        await nc.close()


async def infer(nats_url: str, request: dict, timeout: float = 60) -> dict:
    """One digits.v1.rpc.infer.generic request from a client that knows only msgpack."""
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.request(
            "digits.v1.rpc.infer.generic", msgpack.packb(request), timeout=timeout
        )
        return msgpack.unpackb(msg.data)
    finally:
        await nc.close()
