"""Model jobs: a create command makes one job per sweep combination; each waits for its dataset."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, events, jobs, registry, uploads
from digits.commands import reject
from digits.jobs import Job, JobNotFound, JobStore
from digits.service import periodically
from train_service import follow

log = logging.getLogger(__name__)

SWEEP_FIELDS = ("learning_rate", "batch_size")
Registrar = Callable[[Job, dict[str, Any], events.Event], Awaitable[None]]


def sweep_values(form: dict[str, Any], field: str) -> list[Any]:
    """A field's values: DIGITS accepted a comma-separated list (or a list) for a sweep."""
    value = form.get(field)
    if value is None or value == "":
        return [None]
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    parsed = []
    for item in items:
        text = str(item).strip()
        try:
            parsed.append(int(text) if field == "batch_size" else float(text))
        except ValueError:
            raise ValueError(f"{field} {item!r} is not a number") from None
    return parsed or [None]


def sweep(name: str, form: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One (name, form) per combination of the swept fields, named after its values."""
    values = [sweep_values(form, f) for f in SWEEP_FIELDS]
    combos = list(itertools.product(*values))
    out = []
    for combo in combos:
        sub = dict(form)
        label = []
        for field, value in zip(SWEEP_FIELDS, combo, strict=True):
            if value is not None:
                sub[field] = value
                if len(sweep_values(form, field)) > 1:
                    label.append(f"{'lr' if field == 'learning_rate' else 'bs'}={value:g}")
        out.append((f"{name} ({', '.join(label)})" if label else name, sub))
    return out


class Scheduler:
    """Creates model jobs and queues each for training once its dataset is Done."""

    def __init__(
        self,
        js: JetStreamContext,
        jobs_: JobStore,
        registrar: Registrar | None = None,
        follow_defaults: dict[str, float] | None = None,
    ) -> None:
        self.js = js
        self.jobs = jobs_
        self.registrar = registrar  # registers a job that names a registry_name
        self.follow_defaults = follow_defaults or {"min_new_samples": 1, "min_interval_s": 0.0}

    async def on_create(self, msg: Msg) -> None:
        """Handle model.create: validate, create the sweep's jobs (once), queue or wait."""
        cmd = events.decode(msg.data, events.ModelCreate)
        try:
            combos = sweep(cmd.name, dict(cmd.form))
            fields = follow.registration(dict(cmd.form), self.follow_defaults)
            if fields and fields["mode"] and len(combos) > 1:
                raise ValueError(f"follow cannot be combined with a sweep of {len(combos)} runs")
        except ValueError as exc:
            await reject(self.js, cmd, str(exc))
            return
        idem = await self.js.key_value("digits-idem")
        claim = f"model-create.{cmd.event_id}"
        try:
            entry = await idem.get(claim)
            ids = entry.value.decode().split(",")
        except nats.js.errors.KeyNotFoundError:
            ids = []
        if not ids:
            ids = [jobs.new_job_id(cmd.occurred_at) for _ in combos]
            if cmd.job_id:
                ids[0] = cmd.job_id
            try:
                await idem.create(claim, ",".join(ids).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                ids = (await idem.get(claim)).value.decode().split(",")
        for job_id, (name, form) in zip(ids, combos, strict=True):
            job = Job(
                id=job_id,
                type="model",
                name=name,
                extension=cmd.extension,
                group=cmd.group,
                owner=cmd.owner,
                form=form,
                depends_on=[cmd.dataset_id],
                uploads=uploads.form_uploads(form),  # kept while this record lives
            )
            try:
                job = await self.jobs.create(job)
            except jobs.JobError:
                job = await self.jobs.get(job_id)
            if fields and self.registrar is not None:
                try:
                    await self.registrar(job, fields, cmd)
                except (registry.RegistryError, ValueError) as exc:
                    why = f"could not register as {fields['name']!r}: {exc}"
                    await self.jobs.set_status(job.id, jobs.ERROR, why)
                    await reject(self.js, cmd, why)
                    continue
            await self.advance(job)

    async def advance(self, job: Job) -> None:
        """Move a waiting (or new) model job on according to its dataset's status."""
        if job.status not in (jobs.INITIALIZED, jobs.WAITING):
            return
        dataset_id = job.depends_on[0] if job.depends_on else ""
        try:
            dataset = await self.jobs.get(dataset_id)
        except JobNotFound:
            await self.jobs.set_status(job.id, jobs.ERROR, f"dataset {dataset_id!r} not found")
            return
        if dataset.type != "dataset":
            await self.jobs.set_status(job.id, jobs.ERROR, f"job {dataset_id} is not a dataset")
        elif dataset.status == jobs.DONE:
            if job.extra.get("queued"):
                return
            await bus.publish_event(self.js, events.TrainWork(job_id=job.id))
            await self.jobs.update(
                job.id, lambda j: msgspec.structs.replace(j, extra={**j.extra, "queued": True})
            )
            # Only from Initialized: a worker may have started it already (Running).
            await self.jobs.set_status(
                job.id, jobs.WAITING, "queued for training", only_from=[jobs.INITIALIZED]
            )
        elif dataset.status in (jobs.ERROR, jobs.ABORTED):
            reason = f"dataset {dataset.name!r} ({dataset.id}) is {dataset.status_name}"
            await self.jobs.set_status(
                job.id, jobs.ERROR, reason, only_from=[jobs.INITIALIZED, jobs.WAITING]
            )
        else:
            waiting = f"waiting for dataset {dataset.id}"
            await self.jobs.set_status(job.id, jobs.WAITING, waiting, only_from=[jobs.INITIALIZED])

    async def on_status(self, msg: Msg) -> None:
        """A job changed status: a finished dataset releases (or fails) its waiting models."""
        event = events.decode(msg.data, events.JobStatusChanged)
        if event.job_type != "dataset" or event.status not in jobs.TERMINAL:
            return
        for job in await self.jobs.dependents(event.job_id):
            if job.type == "model":
                await self.advance(job)

    async def run(self, stop: asyncio.Event, interval: float = 10.0) -> None:
        """A slow sweep over waiting models, in case a status event was missed."""

        async def sweep_waiting() -> None:
            # One scan of the bucket; only the waiting models' records are decoded in full.
            for job in await self.jobs.list(
                lambda j: j.type == "model" and j.status == jobs.WAITING
            ):
                await self.advance(job)

        await periodically(stop, interval, sweep_waiting, "waiting-model sweep")
