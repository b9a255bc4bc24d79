"""Shard bookkeeping and the last step of a dataset: mean image, histogram, manifest, ready."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from digits import bus, events, jobs
from digits.dataset import Manifest, MeanAccumulator, ShardInfo, StageInfo, mean_png_bytes
from digits.jobs import Job
from digits.store import NotFoundError
from ingest_service.encode import ChunkResult

if TYPE_CHECKING:
    from ingest_service.pipeline import Pipeline

log = logging.getLogger(__name__)


def merge_chunks(results: list[ChunkResult]) -> dict[str, Any]:
    """One shard's counts, skip reasons, histogram, feature shape and dtype."""
    histogram: dict[str, int] = {}
    for r in results:
        for label, n in r.histogram.items():
            histogram[label] = histogram.get(label, 0) + n
    first = next((r for r in results if r.shape is not None), None)
    return {
        "entries": sum(r.written for r in results),
        "samples": sum(len(r.samples) for r in results),
        "skipped": sum(r.skipped for r in results),
        "reasons": [reason for r in results for reason in r.reasons][:20],
        "histogram": histogram,
        "shape": first.shape if first else None,
        "dtype": first.dtype if first else None,
        "mean": True if any(r.mean for r in results) else None,
    }


def merged_mean_bytes(results: list[ChunkResult]) -> bytes:
    """The shard's partial mean (sum and count), ready to merge with other shards'."""
    total = MeanAccumulator()
    for r in results:
        if r.mean:
            total.merge(MeanAccumulator.from_bytes(r.mean))
    return total.to_bytes()


def record_shard(work: events.IngestShard, stats: dict[str, Any]) -> Callable[[Job], Job | None]:
    """A CAS mutation that records a finished shard once and advances its stage."""
    from ingest_service.pipeline import STAGE_TITLES

    def mutate(job: Job) -> Job | None:
        done = {stage: dict(shards) for stage, shards in job.extra.get("done", {}).items()}
        stage_done = done.setdefault(work.stage, {})
        if str(work.shard) in stage_done:
            return None  # a redelivered shard: counted already
        stage_done[str(work.shard)] = [stats["entries"], stats["skipped"]]
        plan = job.extra["plan"][work.stage]
        written = sum(v[0] for v in stage_done.values())
        skipped = sum(v[1] for v in stage_done.values())
        title = STAGE_TITLES[work.stage]
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
    """Whether every planned shard of every stage is recorded."""
    plan = job.extra.get("plan") or {}
    done = job.extra.get("done", {})
    return bool(plan) and all(len(done.get(s, {})) == p["shards"] for s, p in plan.items())


async def finalize(pipeline: Pipeline, work: events.IngestFinalize) -> None:
    """Merge shard stats and means, write the manifest, mark the job Done, announce it."""
    from ingest_service.pipeline import dataset_key, shard_name

    store, job_store = pipeline.store, pipeline.jobs
    try:
        job = await job_store.get(work.job_id)
    except jobs.JobNotFound:
        return
    if job.status in jobs.TERMINAL or not all_shards_done(job):
        return
    labels: list[str] = job.extra.get("labels") or []
    stages: dict[str, StageInfo] = {}
    mean = MeanAccumulator()
    shape, dtype = None, None
    for stage, plan in job.extra["plan"].items():
        shards, histogram, skipped = [], {}, 0
        for n in range(plan["shards"]):
            stem = dataset_key(job.id, stage, shard_name(n))
            stats = msgspec.json.decode(await store.get(f"{stem}.json"))
            shards.append(ShardInfo(key=f"{stage}/{shard_name(n)}.lmdb", count=stats["samples"]))
            skipped += stats["skipped"]
            shape, dtype = shape or stats["shape"], dtype or stats["dtype"]
            for label, count in stats["histogram"].items():
                name = labels[int(label)] if int(label) < len(labels) else label
                histogram[name] = histogram.get(name, 0) + count
            if stage == "train_db":
                try:
                    mean.merge(MeanAccumulator.from_bytes(await store.get(f"{stem}.mean.npy")))
                except NotFoundError:
                    pass  # a shard whose every entry was skipped
        stages[stage] = StageInfo(
            shards=shards,
            count=sum(s.count for s in shards),
            skipped=skipped,
            histogram=histogram,
        )
    if stages.get("train_db") is None or stages["train_db"].count == 0:
        reasons = "; ".join(job.extra.get("skip_reasons", [])[:3])
        await job_store.set_status(
            job.id, jobs.ERROR, f"no entry of train_db could be encoded ({reasons})"
        )
        return
    mean_keys: dict[str, str] = {}
    if mean.count:
        buf = io.BytesIO()
        np.save(buf, mean.mean())
        await store.put(dataset_key(job.id, "mean.npy"), buf.getvalue())
        await store.put(dataset_key(job.id, "mean.png"), mean_png_bytes(mean.mean()))
        mean_keys = {"npy": "mean.npy", "png": "mean.png"}
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
    )
    await store.put(dataset_key(job.id, "manifest.json"), msgspec.json.encode(manifest))
    url = store.url(dataset_key(job.id, "manifest.json"))

    def done(j: Job) -> Job:
        return msgspec.structs.replace(j, extra={**j.extra, "manifest_url": url})

    await job_store.update(job.id, done)
    await job_store.set_status(job.id, jobs.DONE)
    ready = events.DatasetReady(
        job_id=job.id,
        manifest_url=url,
        version=work.version,
        counts={s: info.count for s, info in stages.items()},
        skipped={s: info.skipped for s, info in stages.items()},
        num_labels=len(labels),
    )
    await bus.publish(
        pipeline.js,
        events.subject_for(ready),
        events.encode(ready),
        msg_id=f"ready:{job.id}/v{work.version}",
    )
    await store.delete_prefix(dataset_key(job.id, "work") + "/")
