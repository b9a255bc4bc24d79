"""The model registry on a real nats-server: versions, aliases by CAS, the rule, the events."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from digits import bus, events, jobs, registry, subjects
from digits.jobs import Job, JobStore
from digits.registry import Registry, RegistryError
from train_service.registry_worker import RegistryWorker


async def setup(nc) -> tuple[JobStore, Registry, RegistryWorker]:
    """A job store, a registry and the train service's registry worker on one connection."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_kv(js)
    store = JobStore(js, kv[subjects.KV_JOBS])
    reg = Registry(kv[subjects.KV_REGISTRY], js)
    return store, reg, RegistryWorker(js, store, reg)


async def model_job(
    store: JobStore, status: str = jobs.DONE, owner: str = "alice", acc: float = 0.8, **kw
) -> Job:
    """A model job record (on a dataset record), ended in ``status`` with val_accuracy ``acc``."""
    dataset = await store.create(
        Job(id=jobs.new_job_id(), type="dataset", name="shapes", owner=owner, status=jobs.DONE)
    )
    extra = {"final_metrics": {"val_accuracy": acc, "val_loss": 1 - acc}}
    return await store.create(
        Job(
            id=jobs.new_job_id(),
            type="model",
            name="lenet",
            owner=owner,
            status=status,
            depends_on=[dataset.id],
            extra=extra,
            **kw,
        )
    )


def register(job: Job, name: str = "shapes", **kw) -> events.RegistryRegister:
    """A register command for ``job`` by its owner."""
    return events.RegistryRegister(**{"name": name, "job_id": job.id, "owner": job.owner, **kw})


async def registry_events(js, name: str) -> list[events.RegistryChanged]:
    """Every registry.changed event stored for ``name``, in order."""
    sub = await js.subscribe(subjects.evt_registry_all(name), ordered_consumer=True)
    found = []
    try:
        while True:
            found.append(events.decode((await sub.next_msg(timeout=0.5)).data))
    except TimeoutError:
        return found
    finally:
        await sub.unsubscribe()


async def test_register_versions_aliases_resolve_and_events(nc):
    store, reg, worker = await setup(nc)
    first, second = await model_job(store), await model_job(store, acc=0.9)
    model = await worker.register(register(first, aliases=["staging"]))
    assert model.versions[0].job_id == first.id and model.versions[0].state == "done"
    assert model.versions[0].metrics["val_accuracy"] == pytest.approx(0.8)
    await worker.register(register(second))
    assert (await store.get(second.id)).extra["registry"] == {"name": "shapes", "version": 2}
    await worker.promote(events.RegistryPromote(name="shapes", version=2, owner="alice"))
    assert await reg.resolve("shapes@production") == second.id
    assert await reg.resolve("shapes@staging") == first.id
    assert await reg.resolve("shapes@v1") == first.id
    assert await reg.resolve(first.id) == first.id  # a job id stays as it is
    kinds = [(e.kind, e.version, e.alias) for e in await registry_events(nc.jetstream(), "shapes")]
    assert kinds == [
        ("registered", 1, ""),
        ("promoted", 1, "staging"),
        ("version", 2, ""),
        ("promoted", 2, "production"),
    ]


async def test_unknown_names_aliases_and_versions_are_clear_errors(nc):
    store, reg, worker = await setup(nc)
    await worker.register(register(await model_job(store)))
    with pytest.raises(registry.UnknownModel, match="no registered model is called 'nope'"):
        await reg.resolve("nope@production")
    with pytest.raises(RegistryError, match=r"'shapes' has no alias 'production' \(aliases: none"):
        await reg.resolve("shapes@production")
    with pytest.raises(RegistryError, match="'shapes' has no version 7"):
        await reg.resolve("shapes@v7")
    with pytest.raises(RegistryError, match="name 'bad name' is not valid"):
        await reg.resolve("bad name@production")


async def test_what_cannot_be_registered_or_promoted_is_refused_with_its_reason(nc):
    store, reg, worker = await setup(nc)
    done = await model_job(store)
    await worker.register(register(done))
    failed = await model_job(store, status=jobs.ERROR)
    aborted = await model_job(store, status=jobs.ABORTED)
    theirs = await model_job(store, owner="bob")
    with pytest.raises(RegistryError, match="is a dataset, not a model"):
        await worker.register(register(done, job_id=done.depends_on[0]))
    with pytest.raises(RegistryError, match="is Error: it cannot be registered"):
        await worker.register(register(failed))
    with pytest.raises(RegistryError, match="is Aborted: it cannot be registered"):
        await worker.register(register(aborted))
    with pytest.raises(RegistryError, match="belongs to 'bob', not to 'alice'"):
        await worker.register(
            events.RegistryRegister(name="shapes", job_id=theirs.id, owner="alice")
        )
    with pytest.raises(RegistryError, match="'shapes' belongs to 'alice', not to 'bob'"):
        await worker.register(register(theirs))  # bob's model into alice's name
    training = await model_job(store, status=jobs.RUNNING)
    await worker.register(register(training))
    with pytest.raises(RegistryError, match="shapes@v2 cannot take 'production': it is training"):
        await worker.promote(events.RegistryPromote(name="shapes", version=2, owner="alice"))
    with pytest.raises(RegistryError, match="belongs to 'alice', not to 'bob'"):
        await worker.promote(events.RegistryPromote(name="shapes", version=1, owner="bob"))
    assert (await reg.get("shapes")).aliases == {}


async def test_a_refused_command_on_the_bus_is_answered_with_command_rejected(nc):
    store, reg, worker = await setup(nc)
    js = nc.jetstream()
    sub = await js.subscribe(
        events.subject_for(events.CommandRejected(command_type="", command_id="", reason="")),
        ordered_consumer=True,
        deliver_policy="new",
    )
    cmd = events.RegistryPromote(name="ghost", version=1, owner="alice")
    await bus.publish_event(js, cmd)
    fetched = await js.pull_subscribe(
        subjects.CMD_REGISTRY_PROMOTE, durable="t", stream=subjects.STREAM_CMD
    )
    (msg,) = await fetched.fetch(1, timeout=5)
    await worker.on_command(msg)
    rejected = events.decode((await sub.next_msg(timeout=5)).data)
    assert isinstance(rejected, events.CommandRejected)
    assert rejected.command_id == cmd.event_id
    assert "no registered model is called 'ghost'" in rejected.reason


async def test_two_racing_promotions_one_wins_the_other_is_a_conflict(nc):
    store, reg, worker = await setup(nc)
    jobs_ = [await model_job(store, acc=a) for a in (0.7, 0.8, 0.9)]
    for job in jobs_:
        await worker.register(register(job))
    await worker.promote(events.RegistryPromote(name="shapes", version=1, owner="alice"))
    for _ in range(5):  # several rounds: each must have exactly one winner
        holder = (await reg.get("shapes")).aliases["production"]
        targets = [v for v in (1, 2, 3) if v != holder]
        outcome = await asyncio.gather(
            *(
                worker.promote(events.RegistryPromote(name="shapes", version=v, owner="alice"))
                for v in targets
            ),
            return_exceptions=True,
        )
        conflicts = [o for o in outcome if isinstance(o, registry.Conflict)]
        wins = [o for o in outcome if isinstance(o, registry.RegisteredModel)]
        assert len(wins) == 1 and len(conflicts) == 1, outcome
        assert f"held by v{wins[0].aliases['production']} now, not v{holder}" in str(conflicts[0])
    # With an explicit expectation, a stale one is a conflict too.
    holder = (await reg.get("shapes")).aliases["production"]
    stale = events.RegistryPromote(name="shapes", version=1, owner="alice", expected=holder % 3 + 1)
    with pytest.raises(registry.Conflict, match="moved"):
        await worker.promote(stale)


async def test_the_rule_promotes_a_better_version_and_says_why_it_kept_a_worse_one(nc):
    store, reg, worker = await setup(nc)
    first = await model_job(store, acc=0.8)
    rule = {"alias": "production", "metric": "val_accuracy", "margin": 0.05}
    model = await worker.register(register(first, rule=rule))
    assert model.aliases == {"production": 1}  # done when registered, and nobody held it
    assert "'production' had no version; v1 val_accuracy=0.8" in model.version(1).note
    running = await model_job(store, status=jobs.RUNNING, acc=0.86)  # +0.06 > margin 0.05
    await worker.register(register(running))
    assert (await reg.get("shapes")).aliases["production"] == 1  # training: not judged yet
    await store.set_status(running.id, jobs.DONE)
    model = await worker.finish(await store.get(running.id))
    assert model.aliases["production"] == 2
    assert "v2 val_accuracy=0.86 beats v1's 0.8 by more than 0.05" in model.version(2).note
    worse = await model_job(store, status=jobs.RUNNING, acc=0.89)  # +0.03 < margin 0.05
    await worker.register(register(worse))
    await store.set_status(worse.id, jobs.DONE)
    model = await worker.finish(await store.get(worse.id))
    assert model.aliases["production"] == 2
    assert "v3 val_accuracy=0.89 does not beat v2's 0.86 by more than 0.05" in model.version(3).note
    better = await model_job(store, status=jobs.RUNNING, acc=0.95)
    await worker.register(register(better))
    await store.set_status(better.id, jobs.ERROR, "out of memory")
    model = await worker.finish(await store.get(better.id))
    assert model.version(4).state == "failed" and model.aliases["production"] == 2
    kinds = [(c.kind, c.version) for c in model.changes]
    assert ("refused", 3) in kinds and ("promoted", 2) in kinds and ("finished", 4) in kinds


async def test_the_sweep_finishes_a_version_whose_status_event_was_missed(nc):
    store, reg, worker = await setup(nc)
    job = await model_job(store, status=jobs.RUNNING, acc=0.9)
    await worker.register(register(job, rule={"metric": "val_loss"}))
    # The job ends without this worker seeing the event.
    await store.update(job.id, lambda j: msgspec.structs.replace(j, status=jobs.DONE))
    assert (await reg.get("shapes")).version(1).state == "training"
    await worker.sweep()
    model = await reg.get("shapes")
    assert model.version(1).state == "done" and model.aliases == {"production": 1}
    assert model.version(1).metrics["val_loss"] == pytest.approx(0.1)
