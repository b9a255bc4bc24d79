"""Shard bookkeeping and the last step of a dataset: mean image, histogram, manifest, ready."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from nats.js import JetStreamContext

from digits import bus, events, jobs
from digits.dataset import Manifest, MeanAccumulator, ShardInfo, StageInfo, mean_png_bytes
from digits.jobs import Job, JobStore
from digits.store import Store
from ingest_service.encode import ChunkResult
from ingest_service.layout import dataset_key, shard_name, stage_title

log = logging.getLogger(__name__)

MEAN_SUMS = "mean-sums.npz"  # the train set's pixel sums and count, so versions can add to them
VERSIONS_KEPT = 100  # the dataset versions a job record lists (the newest); older ones drop off


def merge_chunks(results: list[ChunkResult]) -> dict[str, Any]:
    """One shard's counts, skip reasons, histogram, feature shape and dtype."""
    histogram: dict[str, int] = {}
    for r in results:
        for label, n in r.histogram.items():
            histogram[label] = histogram.get(label, 0) + n
    first = next((r for r in results if r.shape is not None), None)
    shapes = {tuple(r.shape) for r in results if r.shape is not None}
    mixed = len(shapes) > 1 or any(r.mixed_shapes for r in results)
    return {
        "entries": sum(r.written for r in results),
        "samples": sum(r.count for r in results),
        "skipped": sum(r.skipped for r in results),
        "reasons": [reason for r in results for reason in r.reasons][:20],
        "histogram": histogram,
        "shape": first.shape if first else None,
        "dtype": first.dtype if first else None,
        "mean": True if any(r.mean for r in results) and not mixed else None,
        "mixed_shapes": mixed,
    }


def merged_mean_bytes(results: list[ChunkResult]) -> bytes:
    """The shard's partial mean (sum and count), ready to merge with other shards'."""
    total = MeanAccumulator()
    for r in results:
        if r.mean:
            total.merge(r.mean)
    return total.to_bytes()


def record_shard(work: events.IngestShard, stats: dict[str, Any]) -> Callable[[Job], Job | None]:
    """A CAS mutation that records a finished shard once and advances its stage."""

    def mutate(job: Job) -> Job | None:
        if job.extra.get("version", 1) != work.version:
            return None  # a stale shard of an earlier version
        done = {stage: dict(shards) for stage, shards in job.extra.get("done", {}).items()}
        stage_done = done.setdefault(work.stage, {})
        if str(work.shard) in stage_done:
            return None  # a redelivered shard: counted already
        stage_done[str(work.shard)] = [stats["entries"], stats["skipped"]]
        plan = job.extra["plan"][work.stage]
        written = sum(v[0] for v in stage_done.values())
        skipped = sum(v[1] for v in stage_done.values())
        title = stage_title(work.stage, work.version)
        finished = len(stage_done) == plan["shards"]
        stages = []
        for s in job.stages:
            if s.name == title:
                s = msgspec.structs.replace(
                    s,
                    done=written + skipped,
                    progress=(written + skipped) / max(plan["count"], 1),
                    status=jobs.DONE if finished else jobs.RUNNING,
                    finished_at=time.time() if finished else None,
                    counts={"written": written, "skipped": skipped},
                )
            stages.append(s)
        reasons = [*job.extra.get("skip_reasons", []), *stats["reasons"]][:20]
        extra = {**job.extra, "done": done, "skip_reasons": reasons}
        return msgspec.structs.replace(job, stages=stages, extra=extra)

    return mutate


def all_shards_done(job: Job) -> bool:
    """Whether every planned shard of every stage of the current version is recorded."""
    plan = job.extra.get("plan") or {}
    done = job.extra.get("done", {})
    return bool(plan) and all(len(done.get(s, {})) == p["shards"] for s, p in plan.items())


def finalized(job: Job) -> bool:
    """Whether the current version's manifest is written."""
    return job.extra.get("finalized") == job.extra.get("version", 1)


async def finalize(
    js: JetStreamContext, job_store: JobStore, store: Store, work: events.IngestFinalize
) -> None:
    """Merge shard stats and means into the manifest (and the previous version's), announce it."""
    try:
        job = await job_store.get(work.job_id)
    except jobs.JobNotFound:
        return
    if job.status in (jobs.ABORTED, jobs.ERROR) or not all_shards_done(job) or finalized(job):
        return
    if work.version != job.extra.get("version", 1):
        return
    labels: list[str] = job.extra.get("labels") or []
    previous = None
    if work.version > 1:
        previous = Manifest.from_json(await store.get(dataset_key(job.id, "manifest.json")))
    stages: dict[str, StageInfo] = dict(previous.stages) if previous else {}
    added: dict[str, int] = {}
    mean, mixed = MeanAccumulator(), False
    if previous is not None and previous.mean:
        mean.merge(MeanAccumulator.from_bytes(await store.get(dataset_key(job.id, MEAN_SUMS))))
    shape, dtype = (previous.feature_shape, previous.feature_dtype) if previous else (None, None)
    for stage, plan in job.extra["plan"].items():
        old = stages.get(stage) or StageInfo()
        shards, histogram, skipped = list(old.shards), dict(old.histogram), old.skipped
        count = 0
        for n in range(plan["shards"]):
            name = shard_name(n, work.version)
            stats = msgspec.json.decode(await store.get(dataset_key(job.id, stage, f"{name}.json")))
            shards.append(ShardInfo(key=f"{stage}/{name}.lmdb", count=stats["samples"]))
            count += stats["samples"]
            skipped += stats["skipped"]
            shape, dtype = shape or stats["shape"], dtype or stats["dtype"]
            for label, n_label in stats["histogram"].items():
                label_name = labels[int(label)] if int(label) < len(labels) else label
                histogram[label_name] = histogram.get(label_name, 0) + n_label
            if stats.get("mixed_shapes"):
                mixed = True
            elif stage == "train_db" and stats.get("mean") and not mixed:
                partial = await store.get(dataset_key(job.id, stage, f"{name}.mean.npy"))
                try:
                    mean.merge(MeanAccumulator.from_bytes(partial))
                except ValueError:  # shards of different feature sizes: no mean image
                    mixed = True
        added[stage] = count
        stages[stage] = StageInfo(
            shards=shards, count=old.count + count, skipped=skipped, histogram=histogram
        )
    if stages.get("train_db") is None or stages["train_db"].count == 0:
        reasons = "; ".join(job.extra.get("skip_reasons", [])[:3])
        await job_store.set_status(
            job.id, jobs.ERROR, f"no entry of train_db could be encoded ({reasons})"
        )
        return
    mean_keys: dict[str, str] = {}
    if mean.count and not mixed:
        await store.put(dataset_key(job.id, MEAN_SUMS), mean.to_bytes())
        buf = io.BytesIO()
        np.save(buf, mean.mean())
        await store.put(dataset_key(job.id, "mean.npy"), buf.getvalue())
        await store.put(dataset_key(job.id, "mean.png"), mean_png_bytes(mean.mean()))
        mean_keys = {"npy": "mean.npy", "png": "mean.png"}
    if labels:
        await store.put(dataset_key(job.id, "labels.txt"), "\n".join(labels).encode())
    manifest = Manifest(
        job_id=job.id,
        version=work.version,
        extension=job.extension,
        created_at=time.time(),
        labels=labels,
        feature_shape=list(shape or []),
        feature_dtype=dtype or "",
        encoding=job.extra.get("encoding", "none"),
        stages=stages,
        mean=mean_keys,
        extra={**(previous.extra if previous else {}), **job.extra.get("manifest_extra", {})},
    )
    await store.put(dataset_key(job.id, "manifest.json"), manifest.to_json())
    url = store.url(dataset_key(job.id, "manifest.json"))

    counts = {s: info.count for s, info in stages.items()}

    entry = {"version": work.version, "at": time.time(), "added": added, "counts": counts}

    def done(j: Job) -> Job:
        versions = [v for v in j.extra.get("versions") or [] if v.get("version", 0) < work.version]
        extra = {
            **j.extra,
            "manifest_url": url,
            "finalized": work.version,
            "counts": counts,
            "versions": [*versions, entry][-VERSIONS_KEPT:],
        }
        return msgspec.structs.replace(j, extra=extra)

    await job_store.update(job.id, done)
    await job_store.set_status(job.id, jobs.DONE)
    fact: events.Event
    if work.version == 1:
        skipped = {s: info.skipped for s, info in stages.items()}
        fact = events.DatasetReady(
            job_id=job.id,
            manifest_url=url,
            version=1,
            counts=counts,
            skipped=skipped,
            num_labels=len(labels),
        )
    else:
        fact = events.DatasetUpdated(
            job_id=job.id, manifest_url=url, version=work.version, added=added, counts=counts
        )
    msg_id = f"{events.tag_of(type(fact))}:{job.id}/v{work.version}"
    await bus.publish(js, events.subject_for(fact), events.encode(fact), msg_id=msg_id)
    await store.delete_prefix(dataset_key(job.id, "work", f"v{work.version}") + "/")
