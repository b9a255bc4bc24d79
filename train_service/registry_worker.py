"""The registry's writer: registry commands, and versions that finish (their metrics, the rule)."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import events, jobs, registry
from digits.commands import reject
from digits.jobs import Job, JobNotFound, JobStore
from digits.registry import Change, ModelVersion, RegisteredModel, Registry, RegistryError
from train_service import follow as follow_

log = logging.getLogger(__name__)

RegistryCommand = events.RegistryRegister | events.RegistryPromote | events.RegistrySet
STATES = {jobs.DONE: "done", jobs.ERROR: "failed", jobs.ABORTED: "failed"}


def link(job: Job) -> dict[str, Any] | None:
    """The registered name and version a job is, from its record (None: not registered)."""
    found = job.extra.get("registry")
    return found if isinstance(found, dict) and "name" in found else None


def rule_from(fields: dict[str, Any] | None, base: registry.PromotionRule | None = None):
    """A PromotionRule from a command's fields over ``base``; ValueError names a bad one."""
    if fields is None:
        return base
    merged = {**msgspec.structs.asdict(base or registry.PromotionRule()), **fields}
    try:
        rule = msgspec.convert(merged, registry.PromotionRule)
    except msgspec.ValidationError as exc:
        raise ValueError(f"promotion rule {fields!r}: {exc}") from None
    registry.check_alias(rule.alias)
    if not rule.metric or rule.margin < 0:
        raise ValueError(f"promotion rule {fields!r}: a metric is needed and margin must be >= 0")
    return rule


def version_of(job: Job, number: int, **lineage: Any) -> ModelVersion:
    """A new version record for model job ``job``."""
    state = STATES.get(job.status, "training")
    metrics = job.extra.get("final_metrics") or {}
    return ModelVersion(
        version=number,
        job_id=job.id,
        dataset_id=job.depends_on[0] if job.depends_on else "",
        state=state,
        metrics={k: float(v) for k, v in metrics.items()} if state == "done" else {},
        note=job.error if state == "failed" else "",
        **lineage,
    )


class RegistryWorker:
    """Carries out registry commands and finishes versions whose jobs ended."""

    def __init__(self, js: JetStreamContext, jobs_: JobStore, reg: Registry) -> None:
        self.js = js
        self.jobs = jobs_
        self.registry = reg

    async def on_command(self, msg: Msg) -> None:
        """Decode a registry command and carry it out; a refusal is command.rejected."""
        cmd = events.decode(msg.data, RegistryCommand)  # malformed: the worker dead-letters it
        try:
            if isinstance(cmd, events.RegistryRegister):
                await self.register(cmd)
            elif isinstance(cmd, events.RegistryPromote):
                await self.promote(cmd)
            else:
                await self.set(cmd)
        except (RegistryError, ValueError, jobs.JobError) as exc:
            log.info("%s %s rejected: %s", events.tag_of(type(cmd)), cmd.name, exc)
            await reject(self.js, cmd, str(exc))

    async def model_job(self, job_id: str, owner: str) -> Job:
        """The model job ``job_id`` if it may be registered by ``owner``; RegistryError if not."""
        try:
            job = await self.jobs.get(job_id)
        except JobNotFound:
            raise RegistryError(f"job {job_id!r} does not exist") from None
        if job.type != "model":
            raise RegistryError(f"job {job_id} is a {job.type}, not a model")
        if job.status in (jobs.ERROR, jobs.ABORTED):
            raise RegistryError(f"model {job_id} is {job.status_name}: it cannot be registered")
        if job.owner != owner:
            raise RegistryError(f"model {job_id} belongs to {job.owner!r}, not to {owner!r}")
        return job

    async def register_job(self, job: Job, fields: dict[str, Any], cmd: events.Event) -> None:
        """Register a model job that model.create named a ``registry_name`` for (a follower too)."""
        lineage = job.form.get(follow_.LINEAGE_KEY) or {}
        rule = {k: fields[k] for k in ("alias", "metric")} | {"margin": fields["promote_margin"]}
        follow = None
        if fields["mode"] and not lineage:  # a follower's own versions do not follow again
            dataset_version, samples = await self.dataset_state(job)
            follow = registry.Follow(
                dataset_id=job.depends_on[0],
                mode=fields["mode"],
                min_new_samples=fields["follow_min_new_samples"],
                min_interval_s=fields["follow_min_interval_s"],
                last_dataset_version=dataset_version,
                last_samples=samples,
                last_started_at=time.time(),
                training=job.id,  # updates that arrive while v1 trains go into v2
            )
        register = events.RegistryRegister(
            event_id=cmd.event_id, name=fields["name"], job_id=job.id, owner=job.owner, rule=rule
        )
        known = {"parent_version", "snapshot", "mode"}
        await self.register(
            register, follow=follow, lineage={k: v for k, v in lineage.items() if k in known}
        )

    async def register(
        self,
        cmd: events.RegistryRegister,
        follow: registry.Follow | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> RegisteredModel:
        """Register a model job: version 1 of a new name, or the next version of its owner's."""
        registry.check_name(cmd.name)
        aliases = [registry.check_alias(a) for a in cmd.aliases]
        job = await self.model_job(cmd.job_id, cmd.owner)
        found = link(job)
        if found is not None:
            if found["name"] != cmd.name:
                raise RegistryError(
                    f"model {job.id} is already {found['name']}@v{found['version']}"
                )
            model = await self.registry.get(cmd.name)  # a redelivered command: done already
        else:
            try:
                model = await self.registry.get(cmd.name)
            except registry.UnknownModel:
                model = await self._create(cmd, job, follow)
            else:
                model = await self._add(cmd, job, **(lineage or {}))
        number = model.by_job(job.id).version  # type: ignore[union-attr]
        await self.jobs.update(job.id, lambda j: _linked(j, cmd.name, number))
        for alias in aliases:
            model = await self.registry.update(
                cmd.name,
                lambda m, a=alias: registry.move_alias(
                    m,
                    a,
                    number,
                    by=cmd.owner,
                    reason="on registering",
                    expected=None,
                    command_id=cmd.event_id,
                ),
            )
        return model

    async def _create(
        self, cmd: events.RegistryRegister, job: Job, follow: registry.Follow | None
    ) -> RegisteredModel:
        model = RegisteredModel(
            name=cmd.name,
            owner=cmd.owner,
            description=cmd.description,
            rule=rule_from(cmd.rule),
            follow=follow,
            versions=[version_of(job, 1, dataset_version=(await self.dataset_state(job))[0])],
            changes=[Change(kind="registered", version=1, by=cmd.owner, command_id=cmd.event_id)],
        )
        try:
            return await self.registry.create(judged(model, 1))
        except RegistryError:
            return await self._add(cmd, job)  # created meanwhile: a version of it, if ours

    async def _add(self, cmd: events.RegistryRegister, job: Job, **lineage: Any) -> RegisteredModel:
        dataset_version, _ = await self.dataset_state(job)

        def add(m: RegisteredModel) -> RegisteredModel | None:
            m.owned_by(cmd.owner)
            if m.by_job(job.id) is not None:
                return None
            number = m.latest() + 1
            version = version_of(job, number, dataset_version=dataset_version, **lineage)
            change = Change(kind="version", version=number, by=cmd.owner, command_id=cmd.event_id)
            m = msgspec.structs.replace(
                m, versions=[*m.versions, version], changes=[*m.changes, change]
            )
            return judged(m, number)  # a version done already is judged now

        return await self.registry.update(cmd.name, add)

    async def dataset_state(self, job: Job) -> tuple[int, int]:
        """The version and sample count of the dataset a model job trains on (0, 0: unreadable)."""
        try:
            dataset = await self.jobs.get(job.depends_on[0])
        except (JobNotFound, IndexError):
            return 0, 0
        version = int(dataset.extra.get("finalized") or dataset.extra.get("version") or 1)
        return version, follow_.total(dataset.extra.get("counts") or {})

    async def promote(self, cmd: events.RegistryPromote) -> RegisteredModel:
        """Move an alias by hand; of two racing promotions exactly one wins."""
        registry.check_name(cmd.name)
        registry.check_alias(cmd.alias)
        seen: dict[str, int] = {}

        def move(m: RegisteredModel) -> RegisteredModel | None:
            m.owned_by(cmd.owner)
            if any(c.command_id == cmd.event_id for c in m.changes):
                return None  # redelivered: carried out already
            # Without an expectation, the holder first read counts: a racer that moved the
            # alias between this read and the write makes this one a conflict.
            held = seen.setdefault("holder", m.aliases.get(cmd.alias) or 0)
            expected = cmd.expected if cmd.expected is not None else held
            return registry.move_alias(
                m,
                cmd.alias,
                cmd.version,
                by=cmd.owner,
                reason=cmd.reason or "promoted by hand",
                expected=expected,
                command_id=cmd.event_id,
            )

        return await self.registry.update(cmd.name, move)

    async def set(self, cmd: events.RegistrySet) -> RegisteredModel:
        """Change a registered model's description, rule or follower bounds."""
        registry.check_name(cmd.name)

        def change(m: RegisteredModel) -> RegisteredModel | None:
            m.owned_by(cmd.owner)
            follow = m.follow
            if cmd.follow is not None:
                if follow is None:
                    raise RegistryError(f"{m.name!r} does not follow a dataset")
                allowed = {"mode", "min_new_samples", "min_interval_s"}
                bad = sorted(set(cmd.follow) - allowed)
                if bad:
                    raise ValueError(f"follow fields {bad} cannot be set (only {sorted(allowed)})")
                try:
                    follow = msgspec.convert(
                        {**msgspec.structs.asdict(follow), **cmd.follow}, registry.Follow
                    )
                except msgspec.ValidationError as exc:
                    raise ValueError(f"follow {cmd.follow!r}: {exc}") from None
                if follow.mode not in registry.FOLLOW_MODES or follow.min_new_samples < 0:
                    raise ValueError(f"follow {cmd.follow!r}: mode is finetune or scratch")
            new = msgspec.structs.replace(
                m,
                description=m.description if cmd.description is None else cmd.description,
                rule=rule_from(cmd.rule, m.rule),
                follow=follow,
            )
            if new == m:
                return None
            entry = Change(kind="rule", by=cmd.owner, command_id=cmd.event_id)
            return msgspec.structs.replace(new, changes=[*new.changes, entry])

        return await self.registry.update(cmd.name, change)

    async def on_status(self, msg: Msg) -> Job | None:
        """A job changed status: a registered model job that ended finishes its version."""
        event = events.decode(msg.data, events.JobStatusChanged)
        if event.job_type != "model" or event.status not in jobs.TERMINAL:
            return None
        try:
            job = await self.jobs.get(event.job_id)
        except JobNotFound:
            return None
        await self.finish(job)
        return job

    async def finish(self, job: Job) -> RegisteredModel | None:
        """Record a registered job's end (state, metrics), then let the rule judge it."""
        found = link(job)
        if found is None or job.status not in STATES:
            return None
        name, number = found["name"], int(found["version"])

        def finished(m: RegisteredModel) -> RegisteredModel | None:
            version = m.by_job(job.id)
            if version is None or version.state != "training":
                return None
            done = version_of(job, number)
            version = msgspec.structs.replace(
                version, state=done.state, metrics=done.metrics, note=done.note
            )
            versions = [version if v.version == number else v for v in m.versions]
            change = Change(kind="finished", version=number, by="train", reason=done.note)
            m = msgspec.structs.replace(m, versions=versions, changes=[*m.changes, change])
            return judged(m, number)

        try:
            return await self.registry.update(name, finished)
        except registry.UnknownModel:
            return None

    async def sweep(self) -> None:
        """Finish versions whose job ended while no status event reached this service."""
        for model in await self.registry.list():
            for version in model.versions:
                if version.state != "training":
                    continue
                try:
                    job = await self.jobs.get(version.job_id)
                except JobNotFound:
                    continue
                if job.status in STATES:
                    await self.finish(job)


def judged(model: RegisteredModel, number: int) -> RegisteredModel:
    """``model`` after its rule judged finished version ``number``: promoted, or why not."""
    version = model.version(number)
    if model.rule is None or not model.rule.enabled or version.state != "done":
        return model
    promote, why = registry.judge(model, number)
    if promote:
        model = registry.move_alias(
            model, model.rule.alias, number, by="rule", reason=why, expected=None
        )
    else:
        refused = Change(
            kind="refused", version=number, alias=model.rule.alias, by="rule", reason=why
        )
        model = msgspec.structs.replace(model, changes=[*model.changes, refused])
    noted = msgspec.structs.replace(model.version(number), note=why)
    return msgspec.structs.replace(
        model, versions=[noted if v.version == number else v for v in model.versions]
    )


def _linked(job: Job, name: str, number: int) -> Job:
    extra = {**job.extra, "registry": {"name": name, "version": number}}
    return msgspec.structs.replace(job, extra=extra)
