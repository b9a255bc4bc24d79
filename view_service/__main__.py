"""``python -m view_service``: inference by request/reply in the ``view`` queue group.

``DIGITS_VIEW_PROCS`` responder processes (0: one per core) serve together: this one starts the
others (``python -m view_service --worker-of <pid>``), each a full responder in the same queue
group with its own health port (listed at this one's ``/healthz``) and its own models. It
restarts a worker that dies and stops them all when it stops; a worker whose parent is gone
stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from functools import partial
from pathlib import Path

from prometheus_client import Histogram

from digits import subjects
from digits.natsserver import free_port
from digits.registry import Registry
from digits.service import Membership, ServiceRuntime, main, periodically
from digits.store import store_from_settings
from digits.supervisor import Supervisor, child_env, python_module
from view_service.handlers import ROUTES, respond
from view_service.models import Batcher, Deps, ModelCache
from view_service.refs import Refs
from view_service.turns import Turns, out_of_group_loader

NAME = "view"
BATCH = 32  # single images predicted together
RUNNING = {subjects.RPC_INFER_CLASSIFY: 2 * BATCH}  # one batch predicted while the next gathers
RUNNING_OTHERS = 4  # batch requests (many, top N, generic) at once, per process
WORKER_FLAG = "--worker-of"


def procs(setting: int) -> int:
    """How many responder processes DIGITS_VIEW_PROCS means (0: one per core)."""
    return setting or os.cpu_count() or 1


def share_cores(count: int) -> None:
    """Give each of ``count`` processes its share of the cores for TensorFlow's op threads.

    Small batches of small models run faster on one thread than spread over every core (and
    the processes do not fight over them); TF_NUM_INTRAOP_THREADS, if set, wins.
    """
    share = str(max(1, (os.cpu_count() or 1) // count))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", share)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", share)


def worker_of(argv: list[str]) -> int | None:
    """The parent's pid when this process is one of its workers (``--worker-of PID``)."""
    if WORKER_FLAG in argv[:-1]:
        return int(argv[argv.index(WORKER_FLAG) + 1])
    return None


async def watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the parent process is gone (a worker must not outlive it)."""
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        await asyncio.sleep(1.0)


def start_workers(rt: ServiceRuntime, count: int) -> Supervisor:
    """Start ``count`` worker processes, restart them when they die, stop them on stop."""
    supervisor = Supervisor()
    for n in range(count):
        env = rt.settings.to_env() | {"DIGITS_HEALTH_PORT": str(free_port())}
        argv = [*python_module("view_service"), WORKER_FLAG, str(os.getpid())]
        supervisor.add(f"view worker {n + 1}", argv, child_env(env), None)  # our output

    async def poll() -> None:
        supervisor.poll()

    async def stop() -> None:
        await asyncio.to_thread(supervisor.stop)

    def workers() -> list[dict[str, object]]:
        return [
            {"pid": c.pid, "health_port": int(c.env["DIGITS_HEALTH_PORT"]), "alive": bool(c.pid)}
            for c in supervisor.children
        ]

    rt.background(periodically(rt.stop, 1.0, poll, "watching the view workers"))
    rt.defer(stop)
    rt.health["workers"] = workers
    return supervisor


async def setup(rt: ServiceRuntime) -> None:
    """Answer inference requests: classify one, classify many, top N, generic with views."""
    assert rt.jobs is not None
    settings = rt.settings
    store = store_from_settings(settings)
    rt.defer(store.close)
    work = Path(settings.data_dir, "cache", "view")
    sizes = Histogram(
        "digits_view_batch_size",
        "Single-image requests predicted together, per batch",
        registry=rt.metrics.registry,
        buckets=(1, 2, 4, 8, 16, 24, 32, 64),
    )
    batcher = Batcher(max_batch=BATCH, max_delay=0.002, on_batch=sizes.observe)
    deps = Deps(
        cache=ModelCache(store, rt.jobs, work, max_bytes=settings.model_cache_mb << 20),
        batcher=batcher,
        store=store,
        data_roots=settings.data_roots,
        work_dir=work,
    )

    async def close_batcher() -> None:
        batcher.close()

    rt.defer(close_batcher)

    loader = out_of_group_loader()
    rt.defer(partial(asyncio.to_thread, loader.shutdown))

    async def warm(job_id: str, out: bool) -> object:
        return await deps.cache.get(job_id, executor=loader if out else None)

    members: list[Membership] = []
    turns = Turns(work / "turns", lambda: members)
    deps.refs = await Refs(Registry(rt.kv[subjects.KV_REGISTRY]), warm, turns).start()
    rt.defer(deps.refs.stop)
    bound = f"DIGITS_VIEW_QUEUE={settings.view_queue}"
    for subject in ROUTES:
        running = RUNNING.get(subject, RUNNING_OTHERS)
        member = await rt.add_responder(
            subject,
            subjects.QUEUE_VIEW,
            partial(respond, deps),
            concurrency=running,
            waiting=settings.view_queue,
            bound=bound,
        )
        members.append(member)
    turns.start()  # serving: a sibling may now take its turn out of the group

    async def stop_turns() -> None:
        turns.stop()

    rt.defer(stop_turns)
    count = procs(settings.view_procs)
    share_cores(count)  # before the first model load brings TensorFlow in
    parent = worker_of(sys.argv)
    if parent is not None:
        rt.background(watch_parent(parent, rt.stop))
    elif count > 1:
        start_workers(rt, count - 1)


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
