"""Trained models for inference: training's preprocessing, an LRU cache, a micro-batcher.

Keras is imported here only, and lazily (the first model load brings it in, off the event loop,
and freezes what the import made: see ``keras_frozen``).
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
import weakref
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from digits.jobs import Job, JobNotFound, JobStore
from digits.models.layout import DEFAULT_SCALE, INFO, LABELS, model_key, snapshot_key, snapshot_name
from digits.store import NotFoundError, Store
from digits.utils.image import RESIZE_MODES, ImageError, load_image, resize_image

log = logging.getLogger(__name__)

OVERHEAD_BYTES = 1 << 20  # per loaded model, beyond its weights and mean image
RECORD_TTL_S = 2.0  # a request for a listed snapshot trusts a job record read this recently
MEAN_MODES = ("none", "image", "pixel")
_import_lock = threading.Lock()
_imported: Any = None  # keras, once imported and frozen


def keras_frozen() -> Any:
    """Import Keras (TensorFlow with it), collect, then freeze every object the process holds.

    Those modules live as long as the process, yet hold some 330,000 tracked objects: each full
    collection walked them all with the GIL held (50-240 ms, a pause for every request the
    process serves). Frozen, a collection walks only what came later: the models loaded from
    here on stay collectable. The one collection here runs in the first, cold load.
    """
    global _imported
    with _import_lock:
        if _imported is None:
            import keras

            gc.collect()
            gc.freeze()
            _imported = keras
        return _imported


def _load_keras_model(path: Path) -> Any:
    return keras_frozen().models.load_model(path, compile=False)


class InferenceError(ValueError):
    """A request that cannot be served, with a reason the caller can read."""


@dataclass(frozen=True)
class Resize:
    """How an input image becomes a dataset feature: DIGITS's (height, width, channels, mode)."""

    height: int
    width: int
    channels: int
    mode: str = "squash"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    if isinstance(out, list | tuple):
        out = out[0]  # multi-output networks (GoogLeNet's aux heads) put the logits first
    if isinstance(out, np.ndarray):
        return out
    import keras

    return np.asarray(keras.ops.convert_to_numpy(out))


class LoadedModel:
    """A model with its preprocessing: ``preprocess`` then ``predict`` as training saw data."""

    def __init__(
        self,
        model: Any,
        *,
        job_id: str = "",
        epoch: float = 0.0,
        labels: list[str] | None = None,
        resize: Resize | None = None,
        mean: np.ndarray | None = None,
        scale: float = DEFAULT_SCALE,
        crop_size: int | None = None,
        dataset_id: str = "",
        task: str = "classification",
    ) -> None:
        self.model, self.job_id, self.epoch, self.dataset_id = model, job_id, epoch, dataset_id
        self.task = task  # classification, segmentation or regression (train_service.tasks)
        shape = tuple(model.input_shape[1:])
        self.input_shape: tuple[int | None, ...] = shape
        if resize is None:
            if len(shape) != 3 or None in shape:
                raise InferenceError(f"model {job_id}: cannot guess a resize for input {shape}")
            resize = Resize(int(shape[0]), int(shape[1]), int(shape[2]))  # type: ignore[arg-type]
        if resize.mode not in RESIZE_MODES or resize.channels not in (1, 3):
            raise InferenceError(f"model {job_id}: bad resize {resize}")
        self.resize, self.scale, self.crop_size = resize, float(scale), crop_size or None
        feature = (resize.height, resize.width, resize.channels)
        if mean is not None:
            mean = np.asarray(mean, np.float32)
            mean = mean[:, :, None] if mean.ndim == 2 else mean
            if mean.shape not in (feature, (resize.channels,)):
                raise InferenceError(
                    f"model {job_id}: mean of shape {mean.shape} does not fit features {feature}"
                )
        self.mean = mean
        c = self.crop_size
        if c is not None and not 0 < c <= min(resize.height, resize.width):
            raise InferenceError(f"model {job_id}: crop_size {c} does not fit {feature}")
        self.sample_shape = (c, c, resize.channels) if c else feature
        pairs = zip(shape, self.sample_shape, strict=False)
        if len(shape) != 3 or any(a not in (None, b) for a, b in pairs):
            raise InferenceError(
                f"model {job_id} takes inputs of shape {shape}, but its preprocessing "
                f"gives {self.sample_shape}"
            )
        self.labels = list(labels or [])
        self.calls = 0  # model invocations, for tests and metrics
        last = (getattr(model, "layers", None) or [None])[-1]
        self._softmax = getattr(getattr(last, "activation", None), "__name__", "") != "softmax"
        params = int(model.count_params()) if hasattr(model, "count_params") else 0
        extra = 0 if mean is None else mean.nbytes
        self.nbytes = params * 4 + extra + OVERHEAD_BYTES

    def label(self, index: int) -> str:
        """The name of class ``index`` (its number if the model has no labels)."""
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def preprocess(self, image: bytes | str | os.PathLike[str]) -> np.ndarray:
        """Encoded image bytes (or a file) to a float32 HWC input; ImageError if unreadable."""
        return self.prepare(self.feature(image))

    def feature(self, image: bytes | str | os.PathLike[str]) -> np.ndarray:
        """Encoded image bytes (or a file) resized as the dataset stored its features (uint8)."""
        r = self.resize
        pil = load_image(image, r.channels)
        raw = image if isinstance(image, bytes) else os.fspath(image).encode("utf-8", "replace")
        rng = np.random.default_rng(zlib.crc32(raw))  # "fill" noise: the same input, same noise
        return resize_image(pil, r.height, r.width, r.channels, r.mode, rng=rng)

    def prepare(self, feature: np.ndarray) -> np.ndarray:
        """A resized HWC feature (as a dataset stores it) to an input: mean, centre crop, scale."""
        x = np.array(feature, np.float32)
        x = x[:, :, None] if x.ndim == 2 else x
        r = self.resize
        if x.shape != (r.height, r.width, r.channels):
            raise ValueError(f"feature of shape {x.shape} is not {r.height}x{r.width}x{r.channels}")
        if self.mean is not None:
            x -= self.mean
        if self.crop_size:
            c = self.crop_size
            a, b = (x.shape[0] - c) // 2, (x.shape[1] - c) // 2
            x = x[a : a + c, b : b + c]
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x, np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a batch (N, H, W, C); blocking, call in a thread."""
        x = np.asarray(batch, np.float32)
        x = x[None] if x.ndim == 3 else x
        if x.shape[1:] != self.sample_shape:
            raise ValueError(f"batch of shape {x.shape} does not match inputs {self.sample_shape}")
        self.calls += 1
        run = getattr(self.model, "predict_on_batch", None)  # compiled once, then ~1 ms a call
        out = run(x) if run is not None else self.model(x, training=False)
        out = _to_numpy(out).reshape(len(x), -1)
        return softmax(out) if self._softmax else out.astype(np.float32)

    def predict_raw(self, batch: np.ndarray) -> np.ndarray:
        """The network's first output for a batch, in its own shape (N, ...); blocking."""
        x = np.asarray(batch, np.float32)
        x = x[None] if x.ndim == 3 else x
        if x.shape[1:] != self.sample_shape:
            raise ValueError(f"batch of shape {x.shape} does not match inputs {self.sample_shape}")
        self.calls += 1
        run = getattr(self.model, "predict_on_batch", None)
        out = run(x) if run is not None else self.model(x, training=False)
        return _to_numpy(out).astype(np.float32, copy=False)

    @property
    def output_name(self) -> str:
        """The name of the network's first output (the layer that gives it)."""
        names = getattr(self.model, "output_names", None) or ["output"]
        return str(names[0])

    def warm(self) -> None:
        """Trace the predict function for batches of one and of several (blocking)."""
        for n in (1, 2):
            self.predict(np.zeros((n, *self.sample_shape), np.float32))
        self.calls = 0


def _int(form: dict[str, Any], name: str) -> int | None:
    value = form.get(name)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _match(epoch: float, snapshots: list[float]) -> float | None:
    return next((float(s) for s in snapshots if math.isclose(s, epoch, abs_tol=5e-5)), None)


class ModelCache:
    """Loaded snapshots by (job, epoch), least recently used evicted beyond ``max_bytes``."""

    def __init__(self, store: Store, jobs: JobStore, cache_dir: Path, *, max_bytes: int = 2 << 30):
        self.store, self.jobs, self.max_bytes = store, jobs, max_bytes
        self.cache_dir = Path(cache_dir)
        self._models: OrderedDict[tuple[str, float], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, float], asyncio.Future[LoadedModel]] = {}
        self._reading: dict[str, asyncio.Future[Job]] = {}  # job records being read, by id
        self._recent: dict[str, tuple[Job, float]] = {}  # records read lately: when it began
        self.loads = 0  # snapshots loaded from the store

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, key: object) -> bool:
        return key in self._models

    @property
    def nbytes(self) -> int:
        """The estimated memory of the models held."""
        return sum(m.nbytes for m in self._models.values())

    def ready(self, job_id: str, epoch: float) -> LoadedModel | None:
        """The loaded snapshot of a given epoch, if a recent record lists it (no lookup needed)."""
        recent = self._recent.get(job_id)
        if epoch < 0 or recent is None or time.monotonic() - recent[1] >= RECORD_TTL_S:
            return None
        found = _match(float(epoch), [float(s) for s in recent[0].extra.get("snapshots") or []])
        model = None if found is None else self._models.get((job_id, found))
        if model is not None:
            self._models.move_to_end((job_id, found))  # type: ignore[arg-type]
        return model

    def peek(self, job_id: str, epoch: float = -1) -> LoadedModel | None:
        """The loaded snapshot a request probably means (-1: the newest held), without a lookup."""
        epochs = [e for j, e in self._models if j == job_id]
        if epoch >= 0:
            found = _match(float(epoch), epochs)
            return None if found is None else self._models[(job_id, found)]
        return self._models[(job_id, max(epochs))] if epochs else None

    async def resolve(self, job_id: str, epoch: float = -1) -> tuple[Job, float]:
        """The model job and the snapshot epoch a request means (-1: the latest).

        Concurrent requests for one job share one read of its record: a request may see the
        record as it was when the read in flight began (at most a round trip ago). A request
        for a given epoch that a record read less than RECORD_TTL_S ago lists needs no read
        (a snapshot, once listed, stays until its job is deleted).
        """
        now = time.monotonic()
        recent = self._recent.get(job_id)
        if epoch >= 0 and recent is not None and now - recent[1] < RECORD_TTL_S:
            job = recent[0]
            found = _match(float(epoch), [float(s) for s in job.extra.get("snapshots") or []])
            if found is not None:
                return job, found
        future = self._reading.get(job_id)
        if future is None:
            future = asyncio.ensure_future(self.jobs.get(job_id))
            self._reading[job_id] = future
            future.add_done_callback(partial(self._read, job_id, now))
        try:
            job = await asyncio.shield(future)
        except JobNotFound:
            self._recent.pop(job_id, None)
            raise InferenceError(f"no job with id {job_id!r}") from None
        if job.type != "model":
            raise InferenceError(f"job {job.id} is a {job.type}, not a model")
        snapshots = [float(s) for s in job.extra.get("snapshots") or []]
        if not snapshots:
            raise InferenceError(f"model {job.id} has no snapshot yet")
        if epoch < 0:
            return job, snapshots[-1]
        found = _match(float(epoch), snapshots)
        if found is None:
            shown = ", ".join(f"{s:g}" for s in snapshots)
            raise InferenceError(
                f"model {job.id} has no snapshot at epoch {epoch:g}; snapshots: {shown}"
            )
        return job, found

    async def get(
        self, job_id: str, epoch: float = -1, *, executor: Executor | None = None
    ) -> LoadedModel:
        """The loaded snapshot; concurrent gets of one snapshot share one load.

        A load runs its blocking steps (reading the file, tracing) in ``executor`` (by default
        the loop's).
        """
        job, epoch = await self.resolve(job_id, epoch)
        key = (job.id, epoch)
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            return model
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(job, epoch, executor))
            self._loading[key] = future
            future.add_done_callback(lambda f: self._loaded(key, f))
        return await asyncio.shield(future)

    def _read(self, job_id: str, began: float, future: asyncio.Future[Job]) -> None:
        if self._reading.get(job_id) is future:
            del self._reading[job_id]
        if future.cancelled() or future.exception() is not None:  # retrieved, even unawaited
            return
        if len(self._recent) >= 1000:  # ids of jobs read lately, not of every job ever asked
            self._recent = {k: v for k, v in self._recent.items() if began - v[1] < RECORD_TTL_S}
        self._recent[job_id] = (future.result(), began)

    def _loaded(self, key: tuple[str, float], future: asyncio.Future[LoadedModel]) -> None:
        self._loading.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        self._models[key] = future.result()
        self._evict()

    def _evict(self) -> None:
        total = self.nbytes
        while total > self.max_bytes and len(self._models) > 1:
            key, model = self._models.popitem(last=False)
            total -= model.nbytes
            log.info("evicted model %s epoch %g (%d bytes)", key[0], key[1], model.nbytes)

    async def _optional(self, key: str) -> bytes | None:
        try:
            return await self.store.get(key)
        except NotFoundError:
            return None

    async def _load(self, job: Job, epoch: float, executor: Executor | None) -> LoadedModel:
        raw = await self._optional(model_key(job.id, INFO))
        info: dict[str, Any] = json.loads(raw) if raw else {}  # a running job has none yet
        dataset_id = str(info.get("dataset_id") or (job.depends_on or [""])[0])
        try:
            form = dict((await self.jobs.get(dataset_id)).form) if dataset_id else {}
        except JobNotFound:
            form = {}
        manifest: dict[str, Any] = {}
        if dataset_id and (data := await self._optional(f"datasets/{dataset_id}/manifest.json")):
            manifest = json.loads(data)
        mode = str(info.get("mean") or job.form.get("use_mean") or "image").lower()
        if mode not in MEAN_MODES:
            raise InferenceError(f"model {job.id}: unknown mean mode {mode!r}")
        mean = None
        if mode != "none":
            data = dataset_id and await self._optional(f"datasets/{dataset_id}/mean.npy")
            if not data:
                raise InferenceError(
                    f"model {job.id} subtracts a mean, but dataset "
                    f"{dataset_id or '?'} has no mean.npy"
                )
            mean = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
            mean = mean[:, :, None] if mean.ndim == 2 else mean
            if mode == "pixel":
                mean = mean.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        labels = info.get("labels") or manifest.get("labels")
        if not labels and (text := await self._optional(model_key(job.id, LABELS))):
            labels = text.decode().splitlines()
        crop = info.get("crop_size") if info else _int(job.form, "crop_size")
        keras_model = await self._fetch(job.id, epoch, executor)
        shape = list(manifest.get("feature_shape") or keras_model.input_shape[1:])
        shape = shape + [1] if len(shape) == 2 else shape
        height = _int(form, "resize_height") or shape[0]
        width = _int(form, "resize_width") or shape[1]
        channels = _int(form, "resize_channels") or shape[2]
        if None in (height, width, channels):
            raise InferenceError(f"model {job.id}: cannot tell the input image size")
        resize = Resize(height, width, channels, str(form.get("resize_mode") or "squash"))
        model = LoadedModel(
            keras_model,
            job_id=job.id,
            epoch=epoch,
            labels=list(labels or []),
            resize=resize,
            mean=mean,
            scale=float(info.get("scale", DEFAULT_SCALE)),
            crop_size=crop,
            dataset_id=dataset_id,
            task=str(info.get("task") or "classification"),
        )
        await asyncio.get_running_loop().run_in_executor(executor, model.warm)
        return model

    async def _fetch(self, job_id: str, epoch: float, executor: Executor | None) -> Any:
        name = snapshot_name(epoch)
        path = self.cache_dir / "models" / job_id / f".{uuid.uuid4().hex}.{name}"
        try:
            await self.store.get_file(snapshot_key(job_id, epoch), path)
        except NotFoundError:
            raise InferenceError(f"model {job_id}: the snapshot file {name} is missing") from None
        try:
            load = partial(_load_keras_model, path)
            model = await asyncio.get_running_loop().run_in_executor(executor, load)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise InferenceError(f"model {job_id}: cannot load {name}: {exc}") from exc
        finally:
            path.unlink(missing_ok=True)
        self.loads += 1
        return model


Input = np.ndarray | bytes  # a preprocessed input, or an encoded image to preprocess in the batch


def _prepare(model: LoadedModel, inputs: list[Input]) -> tuple[list[Exception | None], np.ndarray]:
    """Decode and preprocess the encoded inputs, predict the good ones (blocking, in a thread)."""
    xs: list[np.ndarray] = []
    errors: list[Exception | None] = []
    for x in inputs:
        try:
            xs.append(x if isinstance(x, np.ndarray) else model.preprocess(x))
            errors.append(None)
        except (ImageError, ValueError) as exc:  # this input's own fault: its request's reply
            errors.append(exc)
    return errors, model.predict(np.stack(xs)) if xs else np.zeros((0, 0), np.float32)


class Batcher:
    """Merges concurrent single predictions for one model into batches of up to ``max_batch``.

    An input may be an encoded image: it is decoded and preprocessed in the batch's thread, with
    the batch's prediction, so a request costs no thread hop of its own. A batch starts as soon
    as the model has fewer than ``max_running`` batches running (a lone request never waits),
    except just after a bigger batch: its requesters are probably on their way back, so what is
    pending waits up to ``max_delay`` for as many to gather. A batch that is running gathers the
    next one.
    """

    def __init__(
        self,
        *,
        max_batch: int = 32,
        max_delay: float = 0.002,
        max_running: int = 1,
        on_batch: Callable[[int], object] | None = None,
    ):
        if max_batch < 1 or max_delay < 0 or max_running < 1:
            raise ValueError("max_batch and max_running must be >= 1, max_delay >= 0")
        self.max_batch, self.max_delay, self.max_running = max_batch, max_delay, max_running
        self._pending: dict[LoadedModel, list[tuple[Input, asyncio.Future[Any]]]] = {}
        self._timers: dict[LoadedModel, asyncio.TimerHandle] = {}
        self._running: dict[LoadedModel, int] = {}  # batches running, per model
        # The last batch of each model: its size and when it ended (weak: models get evicted).
        self._last: weakref.WeakKeyDictionary[LoadedModel, tuple[int, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="batch")
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the last batches run
        self.on_batch = on_batch  # told each batch's size (a metric)

    async def predict(self, model: LoadedModel, x: Input) -> np.ndarray:
        """The probabilities of one input (preprocessed, or an encoded image) with its peers."""
        if not isinstance(x, bytes):
            x = np.asarray(x, np.float32)
            if x.shape != model.sample_shape:
                raise ValueError(f"input of shape {x.shape} is not {model.sample_shape}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(model, []).append((x, future))
        self._consider(model)
        return await future

    def _consider(self, model: LoadedModel) -> None:
        queue = self._pending.get(model)
        if queue:
            queue[:] = [i for i in queue if not i[1].done()]  # those who gave up do not count
        if not queue or self._running.get(model, 0) >= self.max_running:
            return  # nothing to do, or the end of a running batch comes back here
        loop = asyncio.get_running_loop()
        size, ended = self._last.get(model, (0, -math.inf))
        if len(queue) >= min(size, self.max_batch) or loop.time() - ended >= self.max_delay:
            self._flush(model)
        elif model not in self._timers:
            self._timers[model] = loop.call_later(self.max_delay, self._flush, model)

    def _flush(self, model: LoadedModel) -> None:
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        queue = [i for i in self._pending.pop(model, []) if not i[1].done()]
        items, rest = queue[: self.max_batch], queue[self.max_batch :]
        if rest:
            self._pending[model] = rest
        if items:
            self._running[model] = self._running.get(model, 0) + 1
            task = asyncio.ensure_future(self._run(model, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, model: LoadedModel, items: list[tuple[Input, Any]]) -> None:
        loop = asyncio.get_running_loop()
        self.batches.append(len(items))
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            errors, probs = await loop.run_in_executor(
                self._pool, _prepare, model, [x for x, _ in items]
            )
        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # the service stops: so do the waiters
            for _, future in items:
                future.cancel()
            raise
        finally:
            self._running[model] -= 1
            if not self._running[model]:
                del self._running[model]
            self._last[model] = (len(items), loop.time())
            if not self._pending.get(model):
                self._pending.pop(model, None)
            loop.call_soon(self._consider, model)
        rows = iter(probs)
        for (_, future), error in zip(items, errors, strict=True):
            result = next(rows) if error is None else None
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Let the batch threads go (a running batch finishes)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Deps:
    """What the inference handlers use: the model cache, the batcher, the store, the data roots."""

    cache: ModelCache
    batcher: Batcher
    store: Store
    data_roots: Sequence[str] = ()  # where image_list and folder paths may point
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir(), "digits-view"))
    refs: Any = None  # a view_service.refs.Refs: resolves name@alias, name@vN (None: job ids)
