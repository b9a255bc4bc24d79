"""The training worker: one model job at a time, progress on the bus, snapshots, resume."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import msgspec
import psutil
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, events, jobs
from digits.config import Settings
from digits.jobs import Job, JobNotFound, JobStore
from digits.models import archive
from digits.models.layout import snapshot_name
from digits.models.options import TrainOptions
from digits.store import Store
from train_service import devices

log = logging.getLogger(__name__)


def model_key(job_id: str, *parts: str) -> str:
    """A key under the model's folder in the artifact store."""
    return "/".join(("models", job_id, *parts))


class Trainer:
    """Handles train work items: runs Keras in a thread, the bus stays in the event loop."""

    def __init__(self, js: JetStreamContext, jobs_: JobStore, store: Store, settings: Settings):
        self.js = js
        self.jobs = jobs_
        self.store = store
        self.settings = settings

    async def on_train(self, msg: Msg) -> None:
        """Train the job named by the work item, resuming from its checkpoint if there is one."""
        work = events.decode(msg.data, events.TrainWork)
        try:
            job = await self.jobs.get(work.job_id)
        except JobNotFound:
            return
        if job.status in jobs.TERMINAL:
            return  # aborted while queued, or a duplicate of a finished job
        try:
            dataset = await self.jobs.get(job.depends_on[0])
            manifest_url = dataset.extra["manifest_url"]
            options = TrainOptions.from_form(job.form, self.settings)
            table = await asyncio.to_thread(devices.configure, self.settings)
            plan = devices.plan(options.gpus, options.gpu_count, table)
            devices.check_batch(plan, options.batch_size, options.batch_accumulation)
            previous = await self._previous(options)
            if options.pretrained_archive:
                previous = await self._pretrained(job.id, options)
        except (JobNotFound, KeyError, IndexError, ValueError) as exc:
            await self.jobs.set_status(job.id, jobs.ERROR, f"cannot train: {exc}")
            return
        await self.jobs.set_status(job.id, jobs.RUNNING)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        watch = asyncio.ensure_future(self._watch_abort(job.id, stop))
        hardware = asyncio.ensure_future(self._hardware(job.id, self.settings.hardware_s))
        from train_service.session import TrainSession  # Keras loads with the first job

        session = TrainSession(
            job=job,
            options=options,
            manifest_url=manifest_url,
            bridge=Bridge(self, job.id, loop),
            stop=stop,
            cache_dir=Path(self.settings.data_dir, "cache"),
            previous=previous,
            plan=plan,
            sample_cache_mb=self.settings.train_cache_mb,
        )
        try:
            result = await asyncio.to_thread(session.run)
        except asyncio.CancelledError:
            # The service is stopping: the thread stops at the next batch, the message is
            # nak'ed, and the next worker resumes from the last checkpoint.
            stop.set()
            raise
        except Exception as exc:  # noqa: BLE001 - the network, the data or the options are bad
            if (msg.metadata.num_delivered or 1) < 2 and _transient(exc):
                raise
            log.exception("training %s failed", job.id)
            await self.jobs.set_status(job.id, jobs.ERROR, f"{type(exc).__name__}: {exc}")
            return
        finally:
            watch.cancel()
            hardware.cancel()
            if options.pretrained_archive:
                shutil.rmtree(Path(self.settings.data_dir, "cache", "pretrained", job.id), True)
        if result.aborted:
            return  # the abort command already set Aborted; the snapshots stay
        await self.jobs.update(job.id, lambda j: _with(j, final_metrics=result.metrics))
        await self.jobs.set_status(job.id, jobs.DONE)
        ready = events.ModelReady(
            job_id=job.id, epochs=result.epochs, snapshots=result.snapshots, metrics=result.metrics
        )
        await bus.publish(
            self.js, events.subject_for(ready), events.encode(ready), msg_id=f"ready:{job.id}"
        )

    async def _previous(self, options: TrainOptions) -> Path | None:
        """Fetch the snapshot a "previous network" or fine-tuning starts from."""
        if not options.previous_job:
            return None
        previous = await self.jobs.get(options.previous_job)
        snapshots = previous.extra.get("snapshots") or []
        if not snapshots:
            raise ValueError(f"model {previous.id} has no snapshot to start from")
        epoch = options.previous_epoch if options.previous_epoch is not None else snapshots[-1]
        if epoch not in snapshots:
            raise ValueError(f"model {previous.id} has no snapshot at epoch {epoch:g}")
        path = Path(self.settings.data_dir, "cache", "models", previous.id, snapshot_name(epoch))
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.store.get_file(model_key(previous.id, "snapshots", path.name), path)
        return path

    async def _pretrained(self, job_id: str, options: TrainOptions) -> Path:
        """Fetch an uploaded model archive, check it, and take out the snapshot to start from."""
        key = options.pretrained_archive or ""
        folder = Path(self.settings.data_dir, "cache", "pretrained", job_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "archive.tar.gz"
        try:
            await self.store.get_file(key, path)
            return await asyncio.to_thread(
                archive.extract_snapshot, path, folder, options.previous_epoch
            )
        except KeyError:
            shutil.rmtree(folder, True)
            raise ValueError(f"pretrained_archive {key!r} is not in the artifact store") from None
        except archive.ArchiveError as exc:
            shutil.rmtree(folder, True)
            raise ValueError(f"pretrained_archive {key!r}: {exc}") from None
        finally:
            path.unlink(missing_ok=True)

    async def _watch_abort(self, job_id: str, stop: threading.Event) -> None:
        # Abort stops at the next batch: the training thread checks ``stop`` after each one.
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(Exception):
                if (await self.jobs.get(job_id)).status in jobs.TERMINAL:
                    stop.set()
                    return

    async def _hardware(self, job_id: str, every: float = 5.0) -> None:
        proc = psutil.Process()
        proc.cpu_percent()
        while True:
            await asyncio.sleep(every)
            usage = events.HardwareUsage(
                job_id=job_id,
                cpu_pct=proc.cpu_percent(),
                memory_bytes=proc.memory_info().rss,
                gpus=_gpus(),
            )
            with contextlib.suppress(Exception):
                await bus.publish_event(self.js, usage, attempts=1)


class Bridge:
    """What the training thread may do on the event loop: publish, store, record.

    It is the ``session.SessionBridge`` that a ``TrainSession`` is given.
    """

    def __init__(self, trainer: Trainer, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.trainer = trainer
        self.job_id = job_id
        self.loop = loop

    def _run(self, coro: Any, wait: bool, timeout: float = 120.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        if wait:
            return future.result(timeout)
        future.add_done_callback(_log_failure)
        return None

    def publish(self, event: events.Event) -> None:
        """Publish without waiting; a bus outage never stops training."""
        self._run(bus.publish_event(self.trainer.js, event, attempts=2), wait=False)

    def put_file(self, key: str, path: Path) -> str:
        """Store a file under the model's folder; its URL."""
        full = model_key(self.job_id, key)
        self._run(self.trainer.store.put_file(full, path), wait=True)
        return self.trainer.store.url(full)

    def get_file(self, key: str, path: Path) -> bool:
        """Fetch a file of the model's folder, if it exists."""
        full = model_key(self.job_id, key)

        async def fetch() -> bool:
            if not await self.trainer.store.exists(full):
                return False
            await self.trainer.store.get_file(full, path)
            return True

        return self._run(fetch(), wait=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store bytes under the model's folder."""
        self._run(self.trainer.store.put(model_key(self.job_id, key), data), wait=True)

    def record(self, **extra: Any) -> None:
        """Merge fields into the job record's extra (by CAS); failures are logged, not raised."""

        async def update() -> None:
            await self.trainer.jobs.update(self.job_id, lambda j: _with(j, **extra))

        try:
            self._run(update(), wait=True, timeout=30)
        except Exception as exc:  # noqa: BLE001 - the record catches up at the next one
            log.warning("could not record %s for %s: %r", sorted(extra), self.job_id, exc)


def _with(job: Job, **extra: Any) -> Job:
    return msgspec.structs.replace(job, extra={**job.extra, **extra})


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("publish from training failed: %r", future.exception())


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def _gpus() -> list[dict[str, float]]:
    """Per-GPU utilization, memory and temperature through NVML, when present."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        out = []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        for i in range(pynvml.nvmlDeviceGetCount()):
            if visible and str(i) not in visible.split(","):
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            out.append(
                {
                    "index": float(i),
                    "utilization_pct": float(util.gpu),
                    "memory_bytes": float(mem.used),
                    "temp_c": float(temp),
                }
            )
        return out
    except Exception:  # noqa: BLE001 - no driver: no GPU figures
        return []
