"""Inference by ``name@alias`` and ``name@vN`` on a real nats-server: the registry bucket
watched by the view service's handlers, two trained models, an alias moved under load."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import time
from functools import partial

import msgspec
import pytest
from nats.js.kv import KeyValue

from digits import bus, subjects
from digits.config import Settings
from digits.jobs import Job
from digits.registry import ModelVersion, RegisteredModel, Registry, move_alias
from digits.service import Membership, ServiceRuntime
from tests.integration.test_classify import DS, MODEL, World, deps, world  # noqa: F401 - fixtures
from tests.waiting import wait_for
from view_service.handlers import ROUTES, respond
from view_service.models import Deps
from view_service.refs import Refs
from view_service.turns import Turns, out_of_group_loader

pytestmark = pytest.mark.timeout(300)

MODEL2 = "20260101-000002-m0de"  # the same network after one epoch only: another job


@pytest.fixture
async def registered(nc, world: World, deps: Deps) -> tuple[Registry, KeyValue]:  # noqa: F811
    """Two model jobs and a registered model "shapes" (v1, v2; production -> v1)."""
    folder = world.store / "models" / MODEL2
    if not folder.exists():
        shutil.copytree(world.store / "models" / MODEL, folder)
        (folder / "snapshots" / "epoch-2.keras").unlink()
        info = json.loads((folder / "info.json").read_text())
        info |= {"job_id": MODEL2, "snapshots": [1.0], "epochs": 1}
        (folder / "info.json").write_text(json.dumps(info))
    model2 = Job(id=MODEL2, type="model", name="lenet-1", depends_on=[DS])
    model2 = msgspec.structs.replace(model2, form={"use_mean": "image"}, extra={"snapshots": [1]})
    await deps.cache.jobs.create(model2)
    kv = (await bus.ensure_kv(nc.jetstream()))[subjects.KV_REGISTRY]
    reg = Registry(kv)  # read and written here directly, as the train service would
    versions = [
        ModelVersion(version=1, job_id=MODEL, state="done"),
        ModelVersion(version=2, job_id=MODEL2, state="done"),
    ]
    await reg.create(
        RegisteredModel(name="shapes", owner="alice", versions=versions, aliases={"production": 1})
    )
    return reg, kv


@pytest.fixture
async def served(nc, deps: Deps, registered):  # noqa: F811 - the imported fixtures
    """The handlers answering on the real bus with a registry watch; yields (registry, deps,
    warm log)."""
    reg, kv = registered
    warmed: list[tuple[str, float]] = []  # (job, when its load ended)

    async def warm(job_id: str, out: bool = False) -> object:
        await asyncio.sleep(1.0)  # a slow load: requests must not wait on it
        loaded = await deps.cache.get(job_id)
        warmed.append((job_id, time.monotonic()))
        return loaded

    deps.refs = await Refs(Registry(kv), warm).start()

    async def answer(msg) -> None:
        await msg.respond(await respond(deps, msg))

    subs = [await nc.subscribe(s, queue=subjects.QUEUE_VIEW, cb=answer) for s in ROUTES]
    try:
        yield reg, deps, warmed
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await deps.refs.stop()
        deps.batcher.close()


async def ask(nc, job_id: str, shapes: World, subject: str = subjects.RPC_INFER_CLASSIFY) -> dict:
    """One request for the first image; the decoded reply."""
    payload = {"job_id": job_id, "image": shapes.files[0].read_bytes(), "top_k": 2}
    if subject != subjects.RPC_INFER_CLASSIFY:
        payload = {"job_id": job_id, "images": [payload["image"]]}
    msg = await nc.request(subject, msgspec.msgpack.encode(payload), timeout=30)
    return msgspec.msgpack.decode(msg.data)


async def test_refs_name_an_alias_or_a_version_on_every_subject(nc, world: World, served):  # noqa: F811
    by_alias = await ask(nc, "shapes@production", world)
    assert by_alias["ok"], by_alias
    assert (by_alias["job_id"], by_alias["version"]) == (MODEL, 1)
    assert by_alias["ref"] == "shapes@production" and by_alias["epoch"] == 2.0
    by_version = await ask(nc, "shapes@v2", world)
    assert (by_version["job_id"], by_version["version"], by_version["epoch"]) == (MODEL2, 2, 1.0)
    by_id = await ask(nc, MODEL, world)
    assert by_id["job_id"] == MODEL and by_id["ref"] is None and by_id["version"] is None
    assert by_id["predictions"] == by_alias["predictions"]
    for subject in (subjects.RPC_INFER_MANY, subjects.RPC_INFER_TOPN, subjects.RPC_INFER_GENERIC):
        reply = await ask(nc, "shapes@v2", world, subject)
        assert reply["ok"], (subject, reply)
        assert (reply["job_id"], reply["ref"], reply["version"]) == (MODEL2, "shapes@v2", 2)


async def test_unknown_names_aliases_and_versions_are_error_replies(nc, world: World, served):  # noqa: F811
    cases = {
        "nosuch@production": "no registered model is called 'nosuch'",
        "shapes@staging": "'shapes' has no alias 'staging' (aliases: production)",
        "shapes@v9": "'shapes' has no version 9",
        "bad name@production": "'bad name' is not valid",
        "shapes@": "alias '' is not valid",
    }
    for ref, error in cases.items():
        reply = await ask(nc, ref, world)
        assert reply["ok"] is False and error in reply["error"], (ref, reply)
    assert (await ask(nc, "shapes@production", world))["ok"]  # still serving


async def test_an_alias_move_under_load_fails_no_request_and_switches(nc, world: World, served):  # noqa: F811
    reg, view, warmed = served
    replies: list[tuple[float, dict]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            reply = await ask(nc, "shapes@production", world)
            replies.append((time.monotonic(), reply))  # when it came back

    clients = [asyncio.create_task(client()) for _ in range(3)]
    await asyncio.sleep(0.5)
    moved_at = time.monotonic()
    await reg.update("shapes", partial(move_alias, alias="production", number=2, by="t",
                                       reason="test", expected=1))  # fmt: skip
    deadline = time.monotonic() + 30
    while not (replies and replies[-1][1].get("job_id") == MODEL2) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    failed = [r for _, r in replies if not r.get("ok")]
    assert not failed, failed[:3]
    jobs = [r["job_id"] for _, r in replies]
    first_new = jobs.index(MODEL2)
    assert set(jobs[:first_new]) == {MODEL} and set(jobs[first_new:]) == {MODEL2}
    assert [j for j, _ in warmed] == [MODEL2] and view.refs.switches == 1
    loaded_at = warmed[0][1]
    # The old model answered while the new one loaded (a second at least), none after it.
    assert any(moved_at + 0.5 < t < loaded_at for t, r in replies if r["job_id"] == MODEL)
    assert all(t >= loaded_at for t, r in replies if r["job_id"] == MODEL2)
    assert {r["version"] for _, r in replies[first_new:]} == {2}
    assert view.cache.loads == 2  # each model loaded once: no request loaded MODEL2 cold


async def test_two_view_processes_load_a_new_holder_in_turn_out_of_the_queue_group(
    nats_server,
    nc,
    world: World,  # noqa: F811
    deps: Deps,  # noqa: F811
    registered,
    tmp_path,
):
    """Each responder leaves the group while it loads, one at a time; the other answers."""
    reg, kv = registered
    env = {"DIGITS_NATS_URL": nats_server.url, "DIGITS_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env(env | {"DIGITS_HEALTH_PORT": "0"})
    started: list[tuple[float, str]] = []  # (when a request was taken, by whom)
    runtimes: list[ServiceRuntime] = []
    watches: list[Refs] = []
    turns: dict[str, Turns] = {}
    outs: list[bool] = []  # whether each load was made out of the group
    loader = out_of_group_loader()

    async def warm(job_id: str, out: bool = False) -> object:
        outs.append(out)
        await asyncio.sleep(0.7)  # a slow load, long enough to see who answers meanwhile
        return await deps.cache.get(job_id, executor=loader if out else None)

    # Two live pids (this process's, its parent's) name the two "processes"' member files.
    for name, pid in (("a", os.getpid()), ("b", os.getppid())):
        rt = ServiceRuntime(f"view-{name}", settings)
        await rt.start()
        runtimes.append(rt)
        members: list[Membership] = []
        turns[name] = Turns(tmp_path / "turns", lambda m=members: m, pid=pid)
        watches.append(await Refs(Registry(kv), warm, turns[name]).start())
        view = dataclasses.replace(deps, refs=watches[-1])

        async def answer(msg, view=view, name=name) -> bytes:
            started.append((time.monotonic(), name))
            return await respond(view, msg)

        for subject in ROUTES:
            members.append(await rt.add_responder(subject, subjects.QUEUE_VIEW, answer))
        turns[name].start()
    replies: list[dict] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            replies.append(await ask(nc, "shapes@production", world))

    try:
        clients = [asyncio.create_task(client()) for _ in range(3)]
        await wait_for(lambda: len(replies) > 20 and {n for _, n in started} == {"a", "b"})
        await reg.update("shapes", partial(move_alias, alias="production", number=2, by="t",
                                           reason="test", expected=1))  # fmt: skip
        await wait_for(lambda: all(t.outings for t in turns.values()), timeout=30)
        served_both = len(replies)
        await wait_for(lambda: len(replies) > served_both + 20)  # more, once both are back
        stop.set()
        await asyncio.gather(*clients)
    finally:
        for rt in runtimes:
            rt.stop.set()
            await rt.wait()
        for refs in watches:
            await refs.stop()
        for t in turns.values():
            t.stop()
        loader.shutdown()
    failed = [r for r in replies if not r.get("ok")]
    assert not failed, failed[:3]
    assert {r["job_id"] for r in replies[-5:]} == {MODEL2}
    assert outs == [True, True]  # each loaded in the low-priority thread, with a sibling serving
    (a_left, a_back), (b_left, b_back) = turns["a"].outings[0], turns["b"].outings[0]
    assert a_back <= b_left or b_back <= a_left, "both were out of the group at once"
    for name, (left, back) in (("a", (a_left, a_back)), ("b", (b_left, b_back))):
        assert back - left >= 0.7
        taken = [n for t, n in started if left < t < back]
        assert taken and set(taken) == {"b" if name == "a" else "a"}, (name, taken)
