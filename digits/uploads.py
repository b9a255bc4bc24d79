"""Uploads: files kept under ``uploads/`` in the artifact store for jobs to use, and their end.

The gateway stores an uploaded file (a pretrained model archive) before the job that uses it
exists; the job record then names it in ``Job.uploads``. An upload lives while any job record
names it: deleting the last such job removes it (``release``), and ``sweep`` removes those that
no record names once they are older than the TTL (an upload whose job was never created, or
whose removal failed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from digits.jobs import Job, JobStore
from digits.store import Store, StoreError

log = logging.getLogger(__name__)

PREFIX = "uploads/"
# The job form fields whose value may be the store key of an upload.
FIELDS = ("pretrained_archive",)


def form_uploads(form: Mapping[str, Any]) -> list[str]:
    """The upload keys a job form names (those under ``uploads/``), in field order."""
    found = []
    for name in FIELDS:
        value = form.get(name)
        if isinstance(value, str) and value.startswith(PREFIX) and value not in found:
            found.append(value)
    return found


def job_uploads(job: Job) -> set[str]:
    """The uploads a job refers to: its record's ``uploads``, and its form's (older records)."""
    return {*job.uploads, *form_uploads(job.form)}


def referenced(jobs: Iterable[Job]) -> set[str]:
    """Every upload that one of ``jobs`` refers to."""
    found: set[str] = set()
    for job in jobs:
        found |= job_uploads(job)
    return found


@dataclass
class SweepReport:
    """What one sweep did: keys removed (or, dry, to remove), kept, and failed to remove."""

    removed: list[str] = field(default_factory=list)
    referenced: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dry_run: bool = False
    ttl_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return {
            "removed": self.removed,
            "kept_referenced": self.referenced,
            "kept_fresh": self.fresh,
            "failed": self.failed,
            "dry_run": self.dry_run,
            "ttl_s": self.ttl_s,
        }


async def sweep(
    store: Store,
    jobs: JobStore,
    ttl_s: float,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> SweepReport:
    """Remove every upload older than ``ttl_s`` seconds that no job record refers to.

    The store is listed before the job records are read, so an upload stored meanwhile is not
    seen and a job created meanwhile is. A record that cannot be read stops the sweep before
    anything is removed. Safe to repeat, and to run in several processes at once.
    """
    if ttl_s <= 0:
        raise ValueError(f"upload TTL {ttl_s!r} must be a positive number of seconds")
    objects = await store.list_objects(PREFIX)
    now = time.time() if now is None else now
    report = SweepReport(dry_run=dry_run, ttl_s=ttl_s)
    old = [obj for obj in objects if now - obj.modified >= ttl_s]
    report.fresh = [obj.key for obj in objects if now - obj.modified < ttl_s]
    refs = referenced(await jobs.list(strict=True)) if old else set()
    for obj in old:
        if obj.key in refs:
            report.referenced.append(obj.key)
            continue
        age_h = (now - obj.modified) / 3600
        if dry_run:
            log.info("upload sweep (dry run): would remove %s (%.1f h old, no job)", obj.key, age_h)
            report.removed.append(obj.key)
            continue
        try:
            await store.delete(obj.key)
        except StoreError as exc:
            log.warning("upload sweep: could not remove %s: %s", obj.key, exc)
            report.failed.append(obj.key)
            continue
        log.info("upload sweep: removed %s (%.1f h old, no job refers to it)", obj.key, age_h)
        report.removed.append(obj.key)
    log.info(
        "upload sweep%s: %d %s, %d kept (referenced), %d kept (younger than %gs), %d failed",
        " (dry run)" if dry_run else "",
        len(report.removed),
        "to remove" if dry_run else "removed",
        len(report.referenced),
        len(report.fresh),
        ttl_s,
        len(report.failed),
    )
    return report


async def release(store: Store, jobs: JobStore, job: Job) -> list[str]:
    """After ``job``'s record is deleted: remove its uploads that no other job refers to.

    What cannot be removed now is logged and left for the sweep. The removed keys.
    """
    mine = job_uploads(job)
    if not mine:
        return []
    removed: list[str] = []
    try:
        others = referenced(j for j in await jobs.list(strict=True) if j.id != job.id)
        for key in sorted(mine):
            if key in others:
                log.info("upload %s kept: another job refers to it", key)
                continue
            await store.delete(key)
            log.info("removed upload %s with job %s", key, job.id)
            removed.append(key)
    except Exception as exc:  # noqa: BLE001 - the record is gone already; the sweep finishes it
        log.warning("job %s: its uploads are left for the sweep: %r", job.id, exc)
    return removed
