"""Which devices a training job runs on, and the tf.distribute strategy over them.

DIGITS's New Model form names GPUs by index (``select_gpus``, e.g. ``0,2``) or asks for a number
of them (``select_gpu_count``); the indexes are those of the GPUs the process sees (CUDA's, after
``CUDA_VISIBLE_DEVICES``). The operator's ``DIGITS_TRAIN_GPUS`` restricts a worker to some of
them. One device trains on that device; several train under ``tf.distribute.MirroredStrategy``
(the global batch is ``batch_size``, split across the replicas); none asked for trains on all the
worker's GPUs (mirrored when there are several, else TensorFlow's default device).

``DIGITS_TRAIN_CPU_DEVICES=N`` is a hook for machines without a GPU (tests, CI): it splits the CPU
into N logical devices and offers them as the selectable devices 0..N-1 (GPUs are then hidden).
TensorFlow allows that only before it initialises its devices, so :func:`configure` runs when the
service starts, before any job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from digits.config import Settings

log = logging.getLogger(__name__)

CPU_DEVICES_VAR = "DIGITS_TRAIN_CPU_DEVICES"
MAX_CPU_DEVICES = 64


class DeviceError(ValueError):
    """A job asks for devices this worker does not have, or cannot use them as asked."""


@dataclass(frozen=True)
class Devices:
    """The devices a worker may train on: their indexes (as users name them) and TF names."""

    kind: str  # "GPU", or "CPU" for the logical CPUs of the test hook
    indexes: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        """The indexes as a message shows them: ``0, 1`` or ``none``."""
        return ", ".join(str(i) for i in self.indexes) or "none"

    def name_of(self, index: int) -> str:
        """TensorFlow's name of the device the user calls ``index``."""
        return self.names[self.indexes.index(index)]


@dataclass(frozen=True)
class Plan:
    """Where one job trains: no names means TensorFlow's default device."""

    indexes: tuple[int, ...]
    names: tuple[str, ...]
    explicit: bool  # the job asked for these (one asked-for device still pins the job to it)

    @property
    def replicas(self) -> int:
        """Replicas in sync: one per device, or one on the default device."""
        return max(1, len(self.names))


def cpu_devices_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The test hook's logical CPU count (0: off); ValueError names a bad value."""
    value = (os.environ if environ is None else environ).get(CPU_DEVICES_VAR, "").strip()
    if not value:
        return 0
    if not value.isdigit() or not 1 <= int(value) <= MAX_CPU_DEVICES:
        raise ValueError(
            f"{CPU_DEVICES_VAR}={value!r} is not a device count; expected 1..{MAX_CPU_DEVICES}"
        )
    return int(value)


def available(found: Sequence[int], allowed: Sequence[int]) -> tuple[int, ...]:
    """The indexes a worker may use: those found, restricted to ``allowed`` (empty: all)."""
    if not allowed:
        return tuple(found)
    missing = [i for i in allowed if i not in found]
    if missing:
        log.warning(
            "DIGITS_TRAIN_GPUS names %s, which this machine does not have (it has %s)",
            ", ".join(map(str, missing)),
            ", ".join(map(str, found)) or "none",
        )
    return tuple(i for i in allowed if i in found)


def plan(gpus: Sequence[int], count: int | None, devices: Devices) -> Plan:
    """Where a job with ``select_gpus`` / ``select_gpu_count`` trains; DeviceError if it cannot."""
    kind = devices.kind
    if gpus:
        chosen = tuple(dict.fromkeys(gpus))
        for index in chosen:
            if index not in devices.indexes:
                raise DeviceError(
                    f"{kind} {index} is not available on this worker; "
                    f"available {kind}s: {devices.describe()}"
                )
        return Plan(chosen, tuple(devices.name_of(i) for i in chosen), explicit=True)
    if count is not None:
        if count > len(devices.indexes):
            raise DeviceError(
                f"select_gpu_count {count} asks for more {kind}s than this worker has "
                f"({len(devices.indexes)}: {devices.describe()})"
            )
        chosen = devices.indexes[:count]
        return Plan(chosen, tuple(devices.name_of(i) for i in chosen), explicit=True)
    if len(devices.indexes) > 1:
        return Plan(devices.indexes, devices.names, explicit=False)
    return Plan(devices.indexes, (), explicit=False)  # one device or none: TF's default


def check_batch(plan_: Plan, batch_size: int, batch_accumulation: int) -> None:
    """Raise DeviceError where mirrored training cannot run the batch as asked."""
    n = plan_.replicas
    if n < 2:
        return
    if batch_size % n:
        raise DeviceError(
            f"batch_size {batch_size} does not split evenly across {n} devices; "
            f"use a multiple of {n}"
        )
    if batch_accumulation > 1:
        raise DeviceError(
            f"batch_accumulation {batch_accumulation} is not supported across {n} devices; "
            "use 1, or select one device"
        )


_lock = threading.Lock()
_devices: Devices | None = None


def configure(settings: Settings, cpu_devices: int | None = None) -> Devices:
    """Set TensorFlow's devices up once per process (before it initialises them); the table."""
    global _devices
    with _lock:
        if _devices is None:
            n = cpu_devices_from_env() if cpu_devices is None else cpu_devices
            _devices = _configure(settings, n)
            shown = ", ".join(_devices.names) or "the default device"
            log.info("training devices: %s %s (%s)", _devices.kind, _devices.describe(), shown)
        return _devices


def backend() -> str:
    """The Keras backend this process trains with (TensorFlow unless KERAS_BACKEND says)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _configure(settings: Settings, cpu_devices: int) -> Devices:
    if backend() != "tensorflow":
        # Device selection and mirroring are tf.distribute's: other backends use their default.
        log.info("Keras backend %s: training on its default device", backend())
        return Devices(backend())
    import tensorflow as tf

    if cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_visible_devices([], "GPU")
            config = [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
            tf.config.set_logical_device_configuration(cpu, config)
        except RuntimeError as exc:  # TF was initialised before: keep what it has
            log.warning("cannot split the CPU into %d devices: %s", cpu_devices, exc)
        found = range(len(tf.config.list_logical_devices("CPU")))
        indexes = available(list(found), settings.train_gpus)
        return Devices("CPU", indexes, tuple(f"/device:CPU:{i}" for i in indexes))
    gpus = tf.config.list_physical_devices("GPU")
    indexes = available(list(range(len(gpus))), settings.train_gpus)
    if len(indexes) < len(gpus):
        try:  # the other GPUs are someone else's: TF must not even reserve memory on them
            tf.config.set_visible_devices([gpus[i] for i in indexes], "GPU")
        except RuntimeError as exc:
            log.warning("cannot hide GPUs outside DIGITS_TRAIN_GPUS: %s", exc)
            return Devices("GPU", indexes, tuple(f"/device:GPU:{i}" for i in indexes))
    # Visible GPUs are numbered 0.. in order: the k-th allowed one is /device:GPU:k.
    return Devices("GPU", indexes, tuple(f"/device:GPU:{k}" for k in range(len(indexes))))


def strategy(plan_: Plan) -> Any:
    """The tf.distribute strategy of a plan: mirrored, one device, or TF's default."""
    if backend() != "tensorflow":
        return _DefaultDevice()
    import tensorflow as tf

    if len(plan_.names) > 1:
        return tf.distribute.MirroredStrategy(devices=list(plan_.names))
    if plan_.names and plan_.explicit:
        return tf.distribute.OneDeviceStrategy(plan_.names[0])
    return tf.distribute.get_strategy()


class _DefaultDevice:
    """What a strategy offers, for backends without tf.distribute: one replica, no scope."""

    num_replicas_in_sync = 1

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """A scope that changes nothing."""
        return contextlib.nullcontext()
