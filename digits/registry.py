"""The model registry: named models, their versions and aliases, in the ``digits-registry`` bucket.

A registered model is one KV entry (key: its name). Every change goes through compare-and-swap
(:meth:`Registry.update`) and appends a :class:`Change` to the record; each change is then
announced as a ``registry.changed`` event on ``digits.v1.evt.registry.<name>.<kind>``.

References: wherever a job id is accepted for inference, ``name@alias`` and ``name@vN`` name
the job of the version that alias (or number) points at (:func:`parse_ref`, :meth:`resolve`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from digits import bus, events

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
LOWER_IS_BETTER = ("loss", "error", "mae", "mse")  # a metric whose name holds one of these
MAX_CHANGES = 200  # the record keeps this many latest changes; the events keep them all
FOLLOW_MODES = ("finetune", "scratch")


class RegistryError(Exception):
    """A registry request that cannot be carried out; the message says why."""


class UnknownModel(RegistryError, KeyError):
    """No registered model has that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown registered model"


class Conflict(RegistryError):
    """Someone else changed the alias first (the loser of a race)."""


class PromotionRule(msgspec.Struct, frozen=True, kw_only=True):
    """When a finished version takes the alias: its metric beats the holder's by ``margin``."""

    alias: str = "production"
    metric: str = "val_accuracy"
    margin: float = 0.0
    enabled: bool = True

    def lower_is_better(self) -> bool:
        """Whether a smaller value of the metric is better (a loss or an error)."""
        return any(word in self.metric.lower() for word in LOWER_IS_BETTER)

    def better(self, new: float, old: float) -> bool:
        """Whether ``new`` beats ``old`` by more than the margin."""
        if self.lower_is_better():
            return new < old - self.margin
        return new > old + self.margin


class Follow(msgspec.Struct, frozen=True, kw_only=True):
    """A registered model that follows its dataset: each new dataset version trains a version."""

    dataset_id: str
    mode: str = "finetune"  # or "scratch"
    min_new_samples: int = 1
    min_interval_s: float = 0.0
    last_dataset_version: int = 1  # the dataset version the latest version was started on
    last_samples: int = 0  # the dataset's sample count then
    last_started_at: float = 0.0
    training: str = ""  # the job id of the version now training, if any
    pending: int = 0  # the newest dataset version not trained yet (updates coalesce here)
    stopped: str = ""  # why the follower stopped, if it did


class ModelVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version: a model job, with its lineage and (once done) its final metrics."""

    version: int
    job_id: str
    created_at: float = msgspec.field(default_factory=time.time)
    dataset_id: str = ""
    dataset_version: int = 0
    parent_version: int | None = None
    snapshot: float | None = None  # the parent's snapshot epoch it was fine-tuned from
    mode: str = ""  # "", "finetune" or "scratch"
    state: str = "training"  # training, done, failed
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    note: str = ""  # why it was (or was not) promoted, or why it failed


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a registered model's history."""

    kind: str  # registered, version, finished, promoted, refused, follow, stopped, rule
    at: float = msgspec.field(default_factory=time.time)
    version: int | None = None
    alias: str = ""
    previous: int | None = None
    by: str = ""  # a user, or "rule"
    reason: str = ""
    command_id: str = ""


class RegisteredModel(msgspec.Struct, frozen=True, kw_only=True):
    """A named model: its versions, its aliases (alias -> version number), its rule, its history."""

    name: str
    owner: str = ""
    description: str = ""
    created_at: float = msgspec.field(default_factory=time.time)
    versions: list[ModelVersion] = msgspec.field(default_factory=list)
    aliases: dict[str, int] = msgspec.field(default_factory=dict)
    rule: PromotionRule | None = None
    follow: Follow | None = None
    changes: list[Change] = msgspec.field(default_factory=list)

    def version(self, number: int) -> ModelVersion:
        """Version ``number``; RegistryError names it if there is none."""
        for v in self.versions:
            if v.version == number:
                return v
        raise RegistryError(f"{self.name!r} has no version {number} (it has {self.latest()})")

    def named(self, alias: str | None, number: int | None) -> ModelVersion:
        """The version an alias (or a number) names; RegistryError says what is missing."""
        if alias is not None:
            if alias not in self.aliases:
                have = ", ".join(sorted(self.aliases)) or "none"
                raise RegistryError(f"{self.name!r} has no alias {alias!r} (aliases: {have})")
            number = self.aliases[alias]
        assert number is not None
        return self.version(number)

    def owned_by(self, owner: str) -> None:
        """RegistryError unless ``owner`` owns this registered model."""
        if self.owner != owner:
            raise RegistryError(f"{self.name!r} belongs to {self.owner!r}, not to {owner!r}")

    def latest(self) -> int:
        """The highest version number (0 when there is none)."""
        return max((v.version for v in self.versions), default=0)

    def by_job(self, job_id: str) -> ModelVersion | None:
        """The version whose job is ``job_id``."""
        return next((v for v in self.versions if v.job_id == job_id), None)

    def aliases_of(self, number: int) -> list[str]:
        """The aliases that point at version ``number``."""
        return sorted(a for a, n in self.aliases.items() if n == number)


def check_name(name: Any, what: str = "registered model name") -> str:
    """``name`` if it is a valid registry name (or alias); ValueError names the bad value."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{what} {name!r} is not valid: 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: Any) -> str:
    """``alias`` if it is a valid alias (not a version number like v3)."""
    check_name(alias, "alias")
    if VERSION_RE.match(alias):
        raise ValueError(f"alias {alias!r} is not valid: it reads as a version number")
    return alias


def parse_ref(ref: str) -> tuple[str, str | None, int | None] | None:
    """``name@alias`` -> (name, alias, None), ``name@vN`` -> (name, None, N); a job id -> None."""
    if "@" not in ref:
        return None
    name, _, tail = ref.partition("@")
    check_name(name)
    found = VERSION_RE.match(tail)
    if found:
        return name, None, int(found.group(1))
    return name, check_alias(tail), None


def is_ref(ref: str) -> bool:
    """Whether ``ref`` is a registry reference rather than a job id."""
    return isinstance(ref, str) and "@" in ref


def _encode(model: RegisteredModel) -> bytes:
    return msgspec.msgpack.encode(model)


def _decode(data: bytes) -> RegisteredModel:
    return msgspec.msgpack.decode(data, type=RegisteredModel)


class Registry:
    """Read and change registered models; every change by CAS, and announced."""

    def __init__(self, kv: KeyValue, js: JetStreamContext | None = None, max_attempts: int = 100):
        self.kv = kv
        self.js = js  # None: read only (the view service, the gateway)
        self.max_attempts = max_attempts

    async def get_with_revision(self, name: str) -> tuple[RegisteredModel, int]:
        """The record of ``name`` and its KV revision; UnknownModel if there is none."""
        try:
            entry = await self.kv.get(check_name(name))
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        except nats.js.errors.KeyNotFoundError:
            raise UnknownModel(f"no registered model is called {name!r}") from None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            raise UnknownModel(f"no registered model is called {name!r}")
        return _decode(entry.value), entry.revision

    async def get(self, name: str) -> RegisteredModel:
        """The record of ``name``; UnknownModel if there is none."""
        return (await self.get_with_revision(name))[0]

    async def names(self) -> list[str]:
        """Every registered model's name, sorted."""
        try:
            return sorted(await self.kv.keys())
        except nats.js.errors.NoKeysError:
            return []

    async def list(self) -> list[RegisteredModel]:
        """Every registered model (records that vanish while listing are left out)."""
        found = []
        for name in await self.names():
            try:
                found.append(await self.get(name))
            except UnknownModel:
                continue
        return found

    async def resolve_version(self, ref: str) -> tuple[RegisteredModel, ModelVersion]:
        """The registered model and version that ``name@alias`` or ``name@vN`` names."""
        try:
            parsed = parse_ref(ref)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        if parsed is None:
            raise RegistryError(f"{ref!r} is not a registry reference (name@alias or name@vN)")
        name, alias, number = parsed
        model = await self.get(name)
        return model, model.named(alias, number)

    async def resolve(self, ref: str) -> str:
        """The job id ``ref`` names: a job id as it is, ``name@alias``/``name@vN`` looked up."""
        if not is_ref(ref):
            return ref
        return (await self.resolve_version(ref))[1].job_id

    async def create(self, model: RegisteredModel) -> RegisteredModel:
        """Store a new registered model (its changes announced); RegistryError if it exists."""
        try:
            revision = await self.kv.create(check_name(model.name), _encode(model))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RegistryError(f"a registered model is already called {model.name!r}") from None
        await self._announce(model, model.changes, revision)
        return model

    async def update(
        self, name: str, mutate: Callable[[RegisteredModel], RegisteredModel | None]
    ) -> RegisteredModel:
        """Apply ``mutate`` by compare-and-swap, retrying on conflict; None means no change.

        ``mutate`` may raise (a RegistryError says why the change is refused); changes it
        appends to ``changes`` are announced once the write has landed.
        """
        for _ in range(self.max_attempts):
            model, revision = await self.get_with_revision(name)
            changed = mutate(model)
            if changed is None or changed == model:
                return model
            new = changed.changes[len(model.changes) :]
            if len(changed.changes) > MAX_CHANGES:
                changed = msgspec.structs.replace(changed, changes=changed.changes[-MAX_CHANGES:])
            try:
                new_revision = await self.kv.update(name, _encode(changed), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone else changed it first: read again, decide again
            await self._announce(changed, new, new_revision)
            return changed
        raise RegistryError(f"{name!r}: gave up after {self.max_attempts} conflicting updates")

    async def _announce(self, model: RegisteredModel, new: list[Change], revision: int) -> None:
        if self.js is None:
            return
        for n, change in enumerate(new):
            event = events.RegistryChanged(
                name=model.name,
                kind=change.kind,
                version=change.version,
                alias=change.alias,
                previous=change.previous,
                job_id=model.version(change.version).job_id if change.version else None,
                by=change.by,
                reason=change.reason,
                command_id=change.command_id,
            )
            await bus.publish(
                self.js,
                events.subject_for(event),
                events.encode(event),
                msg_id=f"registry:{model.name}/{revision}/{n}",
            )


def move_alias(
    model: RegisteredModel,
    alias: str,
    number: int,
    *,
    by: str,
    reason: str,
    expected: int | None,
    command_id: str = "",
) -> RegisteredModel:
    """``model`` with ``alias`` on version ``number``; Conflict if the holder is not ``expected``.

    ``expected`` is the version the caller saw holding the alias (0: none held it); the move
    is refused when the alias has moved since, so that of two racing promotions one wins.
    """
    check_alias(alias)
    version = model.version(number)
    if version.state != "done":
        raise RegistryError(
            f"{model.name}@v{number} cannot take {alias!r}: it is {version.state}, not done"
        )
    holder = model.aliases.get(alias)
    if expected is not None and (holder or 0) != expected:
        held = f"v{holder}" if holder else "no version"
        was = f"v{expected}" if expected else "no version"
        raise Conflict(
            f"{model.name}@{alias} moved: it is held by {held} now, not {was} as expected"
        )
    if holder == number:
        return model
    change = Change(
        kind="promoted",
        version=number,
        alias=alias,
        previous=holder,
        by=by,
        reason=reason,
        command_id=command_id,
    )
    return msgspec.structs.replace(
        model, aliases={**model.aliases, alias: number}, changes=[*model.changes, change]
    )


def judge(model: RegisteredModel, number: int) -> tuple[bool, str]:
    """Whether the rule promotes finished version ``number``, and why (or why not)."""
    rule = model.rule
    if rule is None or not rule.enabled:
        return False, "no promotion rule is set"
    version = model.version(number)
    if version.state != "done":
        return False, f"v{number} is {version.state}"
    new = version.metrics.get(rule.metric)
    if new is None:
        have = ", ".join(sorted(version.metrics)) or "none"
        return False, f"v{number} has no {rule.metric!r} (its metrics: {have})"
    holder = model.aliases.get(rule.alias)
    if holder is None:
        return True, f"{rule.alias!r} had no version; v{number} {rule.metric}={new:.4g}"
    if holder == number:
        return False, f"v{number} already holds {rule.alias!r}"
    old = model.version(holder).metrics.get(rule.metric)
    if old is None:
        return True, f"v{holder} has no {rule.metric!r}; v{number} {rule.metric}={new:.4g}"
    direction = "lower" if rule.lower_is_better() else "higher"
    if rule.better(new, old):
        return True, (
            f"v{number} {rule.metric}={new:.4g} beats v{holder}'s {old:.4g} "
            f"by more than {rule.margin:g} ({direction} is better)"
        )
    return False, (
        f"v{number} {rule.metric}={new:.4g} does not beat v{holder}'s {old:.4g} "
        f"by more than {rule.margin:g} ({direction} is better)"
    )
