"""Models that follow their data: each new dataset version starts the next version of a model.

A follower is a registered model with ``follow`` set (the New Model form's ``follow`` field). On
``dataset.updated`` for its dataset, if enough new samples arrived and enough time passed since
the last version started, it publishes a ``model.create`` for a child job that the scheduler
creates, registers as the next version and queues. At most one version trains at a time: updates
that arrive meanwhile are remembered in ``follow.pending`` and start the next version when the
current one ends. Every decision is a ``follow`` change (an event) saying why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, events, jobs, registry
from digits.jobs import Job, JobNotFound, JobStore
from digits.registry import Change, Follow, RegisteredModel, Registry

log = logging.getLogger(__name__)

# The form keys of a follower (and of any registered model) on model.create.
FORM_KEYS = (
    "registry_name",
    "follow",
    "follow_min_new_samples",
    "follow_min_interval_s",
    "promote_alias",
    "promote_metric",
    "promote_margin",
)
LINEAGE_KEY = "registry_lineage"  # a child's form: parent version, snapshot, mode
RESTART_AFTER_S = 30.0  # a claimed version whose job never appeared is published again


def registration(form: dict[str, Any], defaults: dict[str, float]) -> dict[str, Any] | None:
    """The registry fields of a model.create form, checked; None if it registers nothing.

    ValueError names the bad field and value.
    """
    name = form.get("registry_name")
    mode = str(form.get("follow") or "")
    if not name:
        if mode:
            raise ValueError(
                f"follow {mode!r} needs registry_name (the name its versions go under)"
            )
        return None
    registry.check_name(name)
    if mode and mode not in registry.FOLLOW_MODES:
        raise ValueError(f"follow {mode!r} is not one of {', '.join(registry.FOLLOW_MODES)}")
    alias = registry.check_alias(str(form.get("promote_alias") or "production"))
    metric = str(form.get("promote_metric") or "val_accuracy")
    out = {"name": name, "mode": mode, "alias": alias, "metric": metric}
    for key, default, kind in (
        ("promote_margin", 0.0, float),
        ("follow_min_new_samples", defaults["min_new_samples"], int),
        ("follow_min_interval_s", defaults["min_interval_s"], float),
    ):
        raw = form.get(key)
        try:
            value = kind(default if raw in (None, "") else raw)
        except (TypeError, ValueError):
            raise ValueError(f"{key} {raw!r} is not a number") from None
        if value < 0 or value != value:
            raise ValueError(f"{key} {raw!r} must be 0 or more")
        out[key] = value
    return out


def total(counts: dict[str, int]) -> int:
    """The number of samples a dataset version holds (train and val)."""
    return sum(int(v) for k, v in counts.items() if k in ("train_db", "val_db"))


class Follower:
    """Starts the versions of followers when their datasets grow."""

    def __init__(self, js: JetStreamContext, jobs_: JobStore, reg: Registry) -> None:
        self.js = js
        self.jobs = jobs_
        self.registry = reg

    async def on_updated(self, msg: Msg) -> None:
        """A dataset grew: consider each registered model that follows it."""
        event = events.decode(msg.data, events.DatasetUpdated)
        for model in await self.registry.list():
            if model.follow is not None and model.follow.dataset_id == event.job_id:
                await self.consider(model.name, event.version, total(event.counts))

    async def consider(
        self, name: str, version: int | None = None, samples: int | None = None
    ) -> RegisteredModel:
        """Start the next version of ``name`` if its bounds allow, else remember why not."""
        current = await self.registry.get(name)
        if current.follow is None:
            return current
        dataset: Job | None = None
        try:
            dataset = await self.jobs.get(current.follow.dataset_id)
        except JobNotFound:
            dataset = None
        now = time.time()
        started: dict[str, Any] = {}

        def decide(m: RegisteredModel) -> RegisteredModel | None:
            started.clear()
            f = m.follow
            if f is None or f.stopped:
                return None
            if dataset is None or dataset.status in (jobs.ERROR, jobs.ABORTED):
                why = (
                    f"dataset {f.dataset_id} was deleted"
                    if dataset is None
                    else f"dataset {f.dataset_id} is {dataset.status_name}"
                )
                return _follow(m, msgspec.structs.replace(f, stopped=why), "stopped", why)
            seen = max(version or 0, f.pending, int(dataset.extra.get("finalized") or 0))
            have = samples if samples is not None else total(dataset.extra.get("counts") or {})
            if seen <= f.last_dataset_version:
                return None  # nothing new (a redelivered update)
            if f.training:
                if f.pending >= seen:
                    return None
                why = f"dataset v{seen} arrived while {f.training} trains: it goes into the next"
                return _follow(m, msgspec.structs.replace(f, pending=seen), "follow", why)
            new = have - f.last_samples
            wait = f.min_interval_s - (now - f.last_started_at)
            if new < f.min_new_samples or wait > 0:
                why = (
                    f"dataset v{seen} has {new} new samples, fewer than {f.min_new_samples}"
                    if new < f.min_new_samples
                    else f"dataset v{seen}: the next version may start in {wait:.0f} s"
                )
                if f.pending == seen and any(c.reason == why for c in m.changes[-3:]):
                    return None
                return _follow(m, msgspec.structs.replace(f, pending=seen), "follow", why)
            parent = _parent(m)
            if parent is None:
                why = f"dataset v{seen}: no version is done yet to follow from"
                if f.pending == seen:
                    return None
                return _follow(m, msgspec.structs.replace(f, pending=seen), "follow", why)
            child = jobs.new_job_id()
            started.update(child=child, parent=parent, seen=seen)
            claimed = msgspec.structs.replace(
                f,
                training=child,
                pending=0,
                last_dataset_version=seen,
                last_samples=have,
                last_started_at=now,
            )
            why = f"dataset v{seen} ({new} new samples): starting {child} from v{parent.version}"
            return _follow(m, claimed, "follow", why)

        model = await self.registry.update(name, decide)
        if started:
            await self.start(model, started["child"])
        return model

    async def start(self, model: RegisteredModel, child: str) -> None:
        """Publish the model.create of follower ``model``'s claimed child job ``child``."""
        f = model.follow
        assert f is not None
        parent = _parent(model)
        if parent is None:
            return
        try:
            parent_job = await self.jobs.get(parent.job_id)
        except JobNotFound:
            why = f"v{parent.version}'s job {parent.job_id} was deleted: nothing to start from"
            await self._stop_claim(model.name, child, why)
            return
        form = {k: v for k, v in parent_job.form.items() if k not in (*FORM_KEYS, LINEAGE_KEY)}
        snapshot = None
        if f.mode == "finetune":
            snapshots = parent_job.extra.get("snapshots") or []
            snapshot = float(snapshots[-1]) if snapshots else None
            form.update(method="previous", previous_networks=parent.job_id)
            if snapshot is not None:
                form["previous_network_snapshot"] = snapshot
        form["registry_name"] = model.name
        form[LINEAGE_KEY] = {
            "parent_version": parent.version,
            "snapshot": snapshot,
            "mode": f.mode,
        }
        cmd = events.ModelCreate(
            event_id=f"follow-{child}",
            name=f"{model.name} v{model.latest() + 1}",
            dataset_id=f.dataset_id,
            extension=parent_job.extension,
            form=form,
            group=parent_job.group,
            owner=model.owner,
            job_id=child,
        )
        await bus.publish_event(self.js, cmd)

    async def _stop_claim(self, name: str, child: str, why: str) -> None:
        """Stop follower ``name``, saying why, and let go of its claimed ``child``."""

        def stop(m: RegisteredModel) -> RegisteredModel | None:
            f = m.follow
            if f is None or f.training != child:
                return None
            return _follow(m, msgspec.structs.replace(f, training="", stopped=why), "stopped", why)

        await self.registry.update(name, stop)
        log.warning("follower %s stopped: %s", name, why)

    async def ended(self, job: Job) -> None:
        """A model job ended: if it was a follower's version in training, free the follower."""
        found = job.extra.get("registry")
        if not isinstance(found, dict) or job.status not in jobs.TERMINAL:
            return
        name = found.get("name", "")

        def free(m: RegisteredModel) -> RegisteredModel | None:
            f = m.follow
            if f is None or f.training != job.id:
                return None
            why = f"{job.id} ended {job.status_name}"
            return _follow(m, msgspec.structs.replace(f, training=""), "follow", why)

        try:
            model = await self.registry.update(name, free)
        except registry.UnknownModel:
            return
        if model.follow is not None and not model.follow.training and model.follow.pending:
            await self.consider(name)

    async def sweep(self) -> None:
        """Followers whose bounds now allow a pending version, or whose claim never started."""
        for model in await self.registry.list():
            f = model.follow
            if f is None or f.stopped:
                continue
            try:
                if f.training:
                    await self._check_training(model)
                elif f.pending:
                    await self.consider(model.name)
                else:
                    await self.jobs.get(f.dataset_id)
            except JobNotFound:
                await self.consider(model.name)  # the dataset is gone: the follower stops
            except registry.RegistryError as exc:
                log.warning("follower %s: %s", model.name, exc)

    async def _check_training(self, model: RegisteredModel) -> None:
        f = model.follow
        assert f is not None
        try:
            job = await self.jobs.get(f.training)
        except JobNotFound:
            if time.time() - f.last_started_at > RESTART_AFTER_S:
                await self.start(model, f.training)  # same ids: a duplicate is dropped
            return
        if job.status in jobs.TERMINAL:
            await self.ended(job)


def _parent(model: RegisteredModel) -> registry.ModelVersion | None:
    """The version a new one starts from: the rule's alias holder, else the latest done one."""
    alias = model.rule.alias if model.rule else "production"
    if alias in model.aliases:
        return model.version(model.aliases[alias])
    done = [v for v in model.versions if v.state == "done"]
    return max(done, key=lambda v: v.version) if done else None


def _follow(m: RegisteredModel, follow: Follow, kind: str, why: str) -> RegisteredModel:
    change = Change(kind=kind, by="train", reason=why)
    return msgspec.structs.replace(m, follow=follow, changes=[*m.changes, change])
