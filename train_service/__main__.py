"""``python -m train_service``: model jobs (waiting for datasets) and the training worker."""

from __future__ import annotations

import asyncio
import sys

from nats.aio.msg import Msg

from digits import subjects
from digits.registry import Registry
from digits.service import ServiceRuntime, lower_priority, main, periodically
from digits.store import store_from_settings
from train_service import devices
from train_service.follow import Follower
from train_service.registry_worker import RegistryWorker
from train_service.scheduler import Scheduler
from train_service.trainer import Trainer

NAME = "train"


async def setup(rt: ServiceRuntime) -> None:
    """Register this service's consumers: model commands, dataset outcomes, training work."""
    assert rt.js is not None and rt.jobs is not None
    # Training takes what CPU serving leaves on shared cores (its threads, and TensorFlow's,
    # started from here on, inherit the value).
    lower_priority(rt.settings.train_nice)
    # Before anything else touches TensorFlow: it fixes its devices when it first uses them.
    await asyncio.to_thread(devices.configure, rt.settings)
    store = store_from_settings(rt.settings)
    rt.defer(store.close)
    reg = RegistryWorker(rt.js, rt.jobs, Registry(rt.kv[subjects.KV_REGISTRY], rt.js))
    follower = Follower(rt.js, rt.jobs, reg.registry)
    defaults = {
        "min_new_samples": rt.settings.follow_min_new_samples,
        "min_interval_s": rt.settings.follow_min_interval_s,
    }
    scheduler = Scheduler(rt.js, rt.jobs, reg.register_job, defaults)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_MODEL_COMMANDS], scheduler.on_create)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_REGISTRY_COMMANDS], reg.on_command)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_MODEL_FOLLOWERS], follower.on_updated)

    async def on_status(msg: Msg) -> None:
        await scheduler.on_status(msg)
        job = await reg.on_status(msg)
        if job is not None:
            await follower.ended(job)

    async def sweep() -> None:
        await reg.sweep()
        await follower.sweep()

    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_MODEL_SCHEDULER], on_status)
    rt.background(scheduler.run(rt.stop))
    rt.background(periodically(rt.stop, 5.0, sweep, "registry and follower sweep"))
    trainer = Trainer(rt.js, rt.jobs, store, rt.settings)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_TRAIN], trainer.on_train)


if __name__ == "__main__":
    try:
        devices.cpu_devices_from_env()
    except ValueError as exc:
        print(f"{NAME}: configuration error: {exc}", flush=True)
        sys.exit(2)
    sys.exit(main(NAME, setup))
