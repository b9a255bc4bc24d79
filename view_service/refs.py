"""Inference by ``name@alias`` and ``name@vN``: the registry, read here, and a serving map.

The registry bucket is watched: every record is held (the registry is small), so a ref
resolves without a read. An alias that a request has used is served from a map
(alias ref -> job); when the alias moves, the new holder's model is loaded in the background
and the map switches only once it is loaded, so the old model answers until then and no
request waits on a cold load during a swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator

import msgspec
from nats.js.kv import KeyValue

from digits.registry import RegisteredModel, Registry, RegistryError, is_ref, parse_ref
from view_service.models import InferenceError
from view_service.turns import Turns

log = logging.getLogger(__name__)

WARM_ATTEMPTS = 3  # loads of a new holder tried before the map switches to it regardless
WARM_RETRY_S = 1.0
SWAP_SWITCH_S = 0.0005  # the GIL switch interval while a new holder loads in the background

# Loads (and keeps) a job's latest snapshot; the flag says the process is out of the queue group.
Warm = Callable[[str, bool], Awaitable[object]]


class Target(msgspec.Struct, frozen=True):
    """What a ref names now: its job, its version number, the ref itself."""

    job_id: str
    version: int
    ref: str


class Refs:
    """Resolve registry refs to jobs; follow alias moves without a failed or cold request."""

    def __init__(self, registry: Registry, warm: Warm, turns: Turns | None = None) -> None:
        self.registry = registry
        self.warm = warm
        self.turns = turns  # loads taken in turn with sibling processes, out of the group
        self.records: dict[str, tuple[RegisteredModel, int]] = {}  # name -> record, revision
        self.serving: dict[str, Target] = {}  # alias ref -> the job answering it
        self.switches = 0  # alias moves applied to the map, for tests and metrics
        self._warming: dict[str, tuple[str, asyncio.Task[None]]] = {}  # ref -> (job, task)
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self) -> Refs:
        """Watch the registry bucket: current records first, then changes."""
        self._watcher = watcher = await self.registry.kv.watchall()
        self._task = asyncio.create_task(self._run(watcher), name="registry-watch")
        return self

    async def stop(self) -> None:
        """Stop watching and warming."""
        tasks = [t for _, t in self._warming.values()]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._watcher.stop()

    async def resolve(self, ref: str) -> Target:
        """The job ``ref`` names; InferenceError names an unknown model, alias or version."""
        target = self.serving.get(ref)
        if target is not None:
            return target
        try:
            parsed = parse_ref(ref)
        except ValueError as exc:
            raise InferenceError(f"model reference {ref!r}: {exc}") from None
        if parsed is None:
            raise InferenceError(f"{ref!r} is not a registry reference (name@alias or name@vN)")
        name, alias, _number = parsed
        held = self.records.get(name)
        if held is None:  # not seen by the watch yet (just registered), or unknown: read it
            try:
                model, revision = await self.registry.get_with_revision(name)
            except RegistryError as exc:
                raise InferenceError(str(exc)) from None
            self._keep(model, revision)
            held = self.records[name]
        target = _target(held[0], ref)
        if alias is not None:
            target = self.serving.setdefault(ref, target)  # a swap may have landed meanwhile
        return target

    def _keep(self, model: RegisteredModel, revision: int) -> None:
        """Hold a record unless a newer one is held already."""
        held = self.records.get(model.name)
        if held is None or held[1] < revision:
            self.records[model.name] = (model, revision)

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the current records are all in
                continue
            try:
                self._apply(entry)
            except Exception:  # noqa: BLE001 - one bad record must not stop the watch
                log.exception("registry record %s could not be applied", entry.key)

    def _apply(self, entry: KeyValue.Entry) -> None:
        name, revision = entry.key, entry.revision or 0
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.records.pop(name, None)
            for ref in [r for r in self.serving if r.partition("@")[0] == name]:
                del self.serving[ref]  # its requests now get "no registered model"
            return
        try:
            model = msgspec.msgpack.decode(entry.value, type=RegisteredModel)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("registry record %s cannot be decoded: %s", name, exc)
            return
        self._keep(model, revision)
        model = self.records[name][0]
        for ref, current in list(self.serving.items()):
            if ref.partition("@")[0] != name:
                continue
            try:
                target = _target(model, ref)
            except InferenceError:  # the alias was removed: its requests get a clear error
                del self.serving[ref]
                continue
            if target.job_id == current.job_id:
                self._cancel_warming(ref)
                if target != current:
                    self.serving[ref] = target
                continue
            warming = self._warming.get(ref)
            if warming is not None and warming[0] == target.job_id:
                continue  # that move is being warmed already
            self._cancel_warming(ref)
            task = asyncio.create_task(self._swap(ref, target), name=f"warm {ref}")
            self._warming[ref] = (target.job_id, task)

    def _cancel_warming(self, ref: str) -> None:
        warming = self._warming.pop(ref, None)
        if warming is not None:
            warming[1].cancel()

    async def _swap(self, ref: str, target: Target) -> None:
        """Load the new holder, then switch the map to it (the old one serves until then).

        With ``turns``, the load waits for this process's turn and is done out of the queue
        group while a sibling process serves.
        """
        if self.turns is None:
            await self._load_and_switch(ref, target, False)
            return
        async with self.turns.out(f"loading {target.job_id} for {ref}") as out:
            await self._load_and_switch(ref, target, out)

    async def _load_and_switch(self, ref: str, target: Target, out: bool) -> None:
        for attempt in range(1, WARM_ATTEMPTS + 1):
            try:
                with responsive():
                    await self.warm(target.job_id, out)
                break
            except Exception as exc:  # noqa: BLE001 - logged; the map switches in the end
                log.warning(
                    "%s moved to %s: loading it failed (%d of %d): %s",
                    ref,
                    target.job_id,
                    attempt,
                    WARM_ATTEMPTS,
                    exc,
                )
                if attempt < WARM_ATTEMPTS:
                    await asyncio.sleep(WARM_RETRY_S)
        if self._warming.get(ref, ("", None))[1] is asyncio.current_task():
            del self._warming[ref]
        if ref in self.serving:
            self.serving[ref] = target
            self.switches += 1
            log.info("%s now served by %s (v%d)", ref, target.job_id, target.version)


@contextlib.contextmanager
def responsive() -> Iterator[None]:
    """While a background load runs, hand the GIL over more often (every SWAP_SWITCH_S).

    Loading and tracing a Keras model is Python work that holds the GIL; a request's threads
    waiting for it would wait up to the default 5 ms switch interval at every hand-over. The
    interval is the process's, so it is lowered only while at least one such load runs.
    """
    global _responsive, _saved
    if _responsive == 0:
        _saved = sys.getswitchinterval()
        sys.setswitchinterval(SWAP_SWITCH_S)
    _responsive += 1
    try:
        yield
    finally:
        _responsive -= 1
        if _responsive == 0:
            sys.setswitchinterval(_saved)


_responsive = 0  # background loads running now (all on the event loop's thread)
_saved = 0.005  # the switch interval to restore


def _target(model: RegisteredModel, ref: str) -> Target:
    """What ``ref`` names in ``model``; InferenceError names what is missing."""
    parsed = parse_ref(ref)
    assert parsed is not None
    _name, alias, number = parsed
    try:
        version = model.named(alias, number)
    except RegistryError as exc:
        raise InferenceError(str(exc)) from None
    return Target(version.job_id, version.version, ref)


__all__ = ["Refs", "Target", "is_ref"]
