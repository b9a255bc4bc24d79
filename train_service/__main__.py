"""``python -m train_service``: model jobs (waiting for datasets) and the training worker."""

from __future__ import annotations

import asyncio
import sys

from nats.aio.msg import Msg

from digits import subjects
from digits.registry import Registry
from digits.service import ServiceRuntime, main, periodically
from digits.store import store_from_settings
from train_service import devices
from train_service.registry_worker import RegistryWorker
from train_service.scheduler import Scheduler
from train_service.trainer import Trainer

NAME = "train"


async def setup(rt: ServiceRuntime) -> None:
    """Register this service's consumers: model commands, dataset outcomes, training work."""
    assert rt.js is not None and rt.jobs is not None
    # Before anything else touches TensorFlow: it fixes its devices when it first uses them.
    await asyncio.to_thread(devices.configure, rt.settings)
    store = store_from_settings(rt.settings)
    rt.defer(store.close)
    scheduler = Scheduler(rt.js, rt.jobs)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_MODEL_COMMANDS], scheduler.on_create)
    reg = RegistryWorker(rt.js, rt.jobs, Registry(rt.kv[subjects.KV_REGISTRY], rt.js))
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_REGISTRY_COMMANDS], reg.on_command)

    async def on_status(msg: Msg) -> None:
        await scheduler.on_status(msg)
        await reg.on_status(msg)

    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_MODEL_SCHEDULER], on_status)
    rt.background(scheduler.run(rt.stop))
    rt.background(periodically(rt.stop, 10.0, reg.sweep, "registry sweep"))
    trainer = Trainer(rt.js, rt.jobs, store, rt.settings)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_TRAIN], trainer.on_train)


if __name__ == "__main__":
    try:
        devices.cpu_devices_from_env()
    except ValueError as exc:
        print(f"{NAME}: configuration error: {exc}", flush=True)
        sys.exit(2)
    sys.exit(main(NAME, setup))
