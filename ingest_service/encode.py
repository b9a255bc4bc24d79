"""Encoding entries in worker processes: ``encode_entry``, sample encoding, mean sums."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import msgspec
import numpy as np

from digits.dataset import MeanAccumulator, encode_sample

MAX_REASONS = 20

# One extension instance per (extension, form) in each process: plugins may be costly to build.
_instances: dict[tuple[str, str], Any] = {}


class ChunkResult(msgspec.Struct, kw_only=True):
    """What a worker process returns for a chunk of entries."""

    samples: list[bytes]
    count: int = 0  # samples encoded (``samples`` is emptied once they are written)
    written: int = 0
    skipped: int = 0
    reasons: list[str] = msgspec.field(default_factory=list)
    histogram: dict[str, int] = msgspec.field(default_factory=dict)
    mean: MeanAccumulator | None = None  # the chunk's sum (pickled as one array)
    mixed_shapes: bool = False  # features differ in shape: no mean image for this dataset
    shape: list[int] | None = None
    dtype: str | None = None
    spill: str | None = None  # the file that holds ``samples`` instead (a msgpack array)


def watch_parent(parent: int, every: float = 1.0) -> None:
    """Pool initializer: exit when the service that started us is gone (SIGKILLed, say).

    A killed service cannot stop its pool, and an orphaned encoder would wait on its queue forever.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="digits-parent-watch", daemon=True).start()


def extension_instance(extension_id: str, form: dict[str, Any]) -> Any:
    """The (cached) data extension built from its form, as DIGITS built it."""
    key = (extension_id, json.dumps(form, sort_keys=True, default=str))
    instance = _instances.get(key)
    if instance is None:
        from digits.extensions.data import get_extension

        instance = get_extension(extension_id)(is_inference_db=False, **form)
        _instances.clear()  # keep one: a worker serves one shard at a time
        _instances[key] = instance
    return instance


def encode_chunk(
    extension_id: str,
    form: dict[str, Any],
    entries: list[Any],
    encoding: str,
    want_mean: bool,
    spill: str | None = None,
) -> ChunkResult:
    """Encode entries; an entry that fails is skipped and counted with its reason.

    With ``spill``, the samples are written to that file rather than returned: megabytes of
    samples through the process pool's pipe stall the encoder until the service reads them.
    """
    ext = extension_instance(extension_id, form)
    result = ChunkResult(samples=[])
    mean = MeanAccumulator() if want_mean else None
    # An extension may also hand over the encoded image (a source file that needs no change).
    as_is = getattr(ext, "encode_entry_sample", None)
    for entry in entries:
        try:
            if as_is is not None:
                feature, label, data = as_is(entry, encoding)
                items = [(feature, _plain(label))]
                encoded = [encode_sample(feature, items[0][1], encoding, image_bytes=data)]
            else:
                out = ext.encode_entry(entry)
                items = [(f, _plain(lb)) for f, lb in (out if isinstance(out, list) else [out])]
                encoded = [encode_sample(feature, label, encoding) for feature, label in items]
        except Exception as exc:  # noqa: BLE001 - a bad entry is counted, never fatal
            result.skipped += 1
            if len(result.reasons) < MAX_REASONS:
                result.reasons.append(f"{_describe(entry)}: {exc}")
            continue
        for feature, label in items:
            if result.shape is None:
                shape = list(feature.shape)
                result.shape = shape if len(shape) == 3 else [*shape, 1]
                result.dtype = str(feature.dtype)
            if mean is not None:
                try:
                    mean.add(feature)
                except ValueError:  # features of several sizes have no mean image
                    mean, result.mixed_shapes = None, True
            if isinstance(label, int):
                result.histogram[str(label)] = result.histogram.get(str(label), 0) + 1
        result.samples.extend(encoded)
        result.written += 1
    if mean is not None and mean.count:
        result.mean = mean
    result.count = len(result.samples)
    if spill is not None and result.samples:
        with open(spill, "wb") as f:
            f.write(msgspec.msgpack.encode(result.samples))
        result.samples, result.spill = [], spill
    return result


def spilled_samples(result: ChunkResult) -> list[bytes]:
    """A chunk's samples: returned with it, or read back (and removed) from its spill file."""
    if result.spill is None:
        return result.samples
    with open(result.spill, "rb") as f:
        data = f.read()
    os.unlink(result.spill)
    samples = msgspec.msgpack.decode(data, type=list[bytes])
    if len(samples) != result.count:
        raise ValueError(f"{result.spill} holds {len(samples)} samples, not {result.count}")
    return samples


def _plain(label: Any) -> Any:
    # numpy integer labels become Python ints (msgpack and the histogram want them).
    return int(label) if isinstance(label, np.integer) else label


def _describe(entry: Any) -> str:
    if isinstance(entry, list | tuple) and entry:
        return str(entry[0])
    return str(entry)[:200]
