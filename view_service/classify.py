"""Classify one image or many (in batches, bounded memory), or find each class's top N images."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import itertools
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec
import numpy as np

from digits import dataset as datasets
from digits.inference import MAX_IMAGE_BYTES, MAX_TOTAL_BYTES
from digits.paths import confine
from digits.utils.image import SUPPORTED_EXTENSIONS, ImageError
from view_service.model_data import model_dataset, shard_samples
from view_service.models import Deps, InferenceError, LoadedModel

MAX_SKIP_REASONS = 10
SOURCES = ("images", "image_list", "folder", "dataset_stage")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Positive = Annotated[int, msgspec.Meta(ge=1)]  # checked when a request is decoded


class Prediction(msgspec.Struct, kw_only=True):
    """One class of a ranking."""

    label: str  # the class name
    index: int  # its index in the model's labels
    confidence: float  # its probability, 0..1


class ClassifyOne(msgspec.Struct, kw_only=True):
    """Classify one image."""

    job_id: str  # the model job, or a registry ref: name@alias, name@vN
    epoch: float = -1.0  # the snapshot's epoch; -1: the latest
    image: bytes = b""  # the encoded image (PNG, JPEG, ...), at most MAX_IMAGE_BYTES
    top_k: Positive = 5  # how many classes to return, most likely first


class ClassifyOneReply(msgspec.Struct, kw_only=True):
    """The classes of one image."""

    ok: bool = True
    job_id: str  # the model job
    epoch: float  # the snapshot's epoch that answered
    ref: str | None = None  # the registry ref asked for (name@alias, name@vN), if one was
    version: int | None = None  # the registered version that answered it
    predictions: list[Prediction]  # top_k classes, most likely first


class _Source(msgspec.Struct, kw_only=True):
    """Images for ClassifyMany and TopN: exactly one of images, image_list, folder, stage."""

    job_id: str  # the model job, or a registry ref: name@alias, name@vN
    epoch: float = -1.0  # the snapshot's epoch; -1: the latest
    images: list[bytes] | None = None  # encoded images, at most MAX_TOTAL_BYTES together
    image_list: str | None = None  # lines "path [label]", label a class index or name
    image_folder: str | None = None  # where the relative paths of image_list are
    folder: str | None = None  # a folder of class sub-folders (their names are the labels)
    dataset_stage: Literal["val_db", "test_db"] | None = None  # of the model's own dataset
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64  # images at a time


class ClassifyMany(_Source, kw_only=True):
    """Classify many images; every result goes to a JSON lines file in the store."""

    top_k: Positive = 5  # classes per image
    max_results: Annotated[int, msgspec.Meta(ge=0)] = 1000  # inline results; all: results_url
    request_id: str = ""  # names the results file (1-64 of A-Z a-z 0-9 . _ -); empty: random


class ImageResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One image of a ClassifyMany (a line of the results file)."""

    index: int  # its position in the source (list, folder walk, or dataset sample order)
    path: str | None = None  # its file, for image_list and folder
    label: str | None = None  # its ground truth, if known
    predictions: list[Prediction] = []  # top_k classes, most likely first
    error: str | None = None  # why it was skipped (in the results file only)


class ClassifyManyReply(msgspec.Struct, kw_only=True):
    """Counts, the first results, and accuracy when ground truth is known."""

    ok: bool = True
    job_id: str  # the model job
    epoch: float  # the snapshot's epoch that answered
    ref: str | None = None  # the registry ref asked for (name@alias, name@vN), if one was
    version: int | None = None  # the registered version that answered it
    count: int  # images classified
    skipped: int  # images that could not be read
    skip_reasons: list[str]  # the first MAX_SKIP_REASONS reasons
    request_id: str  # names the results file
    results: list[ImageResult]  # the first max_results results
    results_url: str  # every result as JSON lines (ImageResult maps), skipped ones included
    labels: list[str]  # the model's classes, the order of the confusion matrix
    labelled: int = 0  # images with a known ground truth
    top1_accuracy: float | None = None  # over the labelled images
    top5_accuracy: float | None = None  # truth among the 5 most likely classes
    confusion_matrix: list[list[int]] | None = None  # counts [truth][predicted]
    per_class_accuracy: dict[str, float] | None = None  # class -> recall, classes seen only


class TopN(_Source, kw_only=True):
    """Find, per class, the images the model is most sure belong to it."""

    n: Positive = 9  # images per class


class TopImage(msgspec.Struct, kw_only=True):
    """One of a class's top images."""

    index: int  # its position in the source
    path: str | None = None  # its file, for image_list and folder
    confidence: float  # the probability of the class


class TopNReply(msgspec.Struct, kw_only=True):
    """The top N images of every class."""

    ok: bool = True
    job_id: str  # the model job
    epoch: float  # the snapshot's epoch that answered
    ref: str | None = None  # the registry ref asked for (name@alias, name@vN), if one was
    version: int | None = None  # the registered version that answered it
    count: int  # images classified
    skipped: int  # images that could not be read
    skip_reasons: list[str]  # the first MAX_SKIP_REASONS reasons
    n: int  # images per class asked for
    top: dict[str, list[TopImage]]  # class -> its top images, most confident first


def _top(model: LoadedModel, probs: np.ndarray, k: int) -> list[Prediction]:
    order = np.argsort(-probs, kind="stable")[:k].tolist()  # plain ints for msgpack
    return [Prediction(label=model.label(i), index=i, confidence=float(probs[i])) for i in order]


async def classify_one(deps: Deps, req: ClassifyOne) -> ClassifyOneReply:
    """Classify one image (batched with concurrent requests for the same snapshot)."""
    if len(req.image) > MAX_IMAGE_BYTES:
        raise InferenceError(f"image of {len(req.image)} bytes exceeds {MAX_IMAGE_BYTES} bytes")
    model = deps.cache.ready(req.job_id, req.epoch)
    if model is not None:  # loaded, and listed by a record read a moment ago
        try:
            probs = await deps.batcher.predict(model, req.image)
        except ImageError as exc:
            raise InferenceError(f"image: {exc}") from None
        return ClassifyOneReply(
            job_id=model.job_id, epoch=model.epoch, predictions=_top(model, probs, req.top_k)
        )
    # The snapshot held for this request probably answers it: predict while its record is read
    # (the lookup still decides, and a guess it overrules is predicted again).
    guess = deps.cache.peek(req.job_id, req.epoch)
    early = guess and asyncio.ensure_future(deps.batcher.predict(guess, req.image))
    try:
        model = await deps.cache.get(req.job_id, req.epoch)
        try:
            probs = await (early if model is guess else deps.batcher.predict(model, req.image))
        except ImageError as exc:
            raise InferenceError(f"image: {exc}") from None
    finally:
        if early and not early.done():
            early.cancel()  # overruled, or the lookup failed
        elif early and not early.cancelled():
            early.exception()  # retrieved, whatever became of it
    preds = _top(model, probs, req.top_k)
    return ClassifyOneReply(job_id=model.job_id, epoch=model.epoch, predictions=preds)


@dataclass
class _Item:
    index: int
    path: str | None
    truth: int | None
    load: Callable[[], tuple[np.ndarray, int | None]]  # the input and, if it knows, the truth


def _read(roots: Sequence[str], model: LoadedModel, src: str | bytes, base: str | None) -> Any:
    if isinstance(src, bytes):
        return model.preprocess(src), None
    path = confine(Path(base or "", src), roots)  # relative paths: in image_folder
    return model.preprocess(path.read_bytes()), None  # as bytes, the same as ClassifyOne


def _listed(text: str, names: dict[str, int]) -> Iterator[tuple[str, int | None]]:
    for raw in io.StringIO(text):
        line, truth = raw.strip(), None
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and (parts[1].lstrip("-").isdigit() or parts[1] in names):
            line, truth = parts[0], names[parts[1]] if parts[1] in names else int(parts[1])
        if line and not line.startswith("#"):
            yield line, truth


def _walk(folder: Path, names: dict[str, int]) -> Iterator[tuple[str, int | None]]:
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        parts = Path(top).relative_to(folder).parts
        for name in sorted(files):
            if name.lower().endswith(SUPPORTED_EXTENSIONS):
                yield os.path.join(top, name), names.get(parts[0]) if parts else None


def _sample(model: LoadedModel, raw: bytes) -> Any:
    feature, label = datasets.decode_sample(raw)
    return model.prepare(feature), label if isinstance(label, int) else None


async def _items(deps: Deps, model: LoadedModel, req: _Source) -> Iterator[_Item]:  # lazy
    if sum(getattr(req, name) is not None for name in SOURCES) != 1:
        raise InferenceError(f"give exactly one image source: {', '.join(SOURCES)}")
    read = partial(_read, deps.data_roots, model)
    if req.images is not None:
        if (total := sum(len(i) for i in req.images)) > MAX_TOTAL_BYTES:
            raise InferenceError(f"images of {total} bytes exceed {MAX_TOTAL_BYTES} bytes")
        return (_Item(i, None, None, partial(read, d, None)) for i, d in enumerate(req.images))
    if req.dataset_stage is not None:
        ds = await model_dataset(deps, model, req.dataset_stage)
        raws = itertools.chain.from_iterable(map(shard_samples, ds.shard_paths(req.dataset_stage)))
        return (_Item(n, None, None, partial(_sample, model, r)) for n, r in enumerate(raws))
    if not deps.data_roots:
        raise InferenceError("reading image files needs data roots (DIGITS_DATA_ROOTS)")
    names = {n: i for i, n in enumerate(model.labels)}
    pairs, base = _listed(req.image_list or "", names), req.image_folder
    if req.folder is not None:
        try:
            folder = confine(req.folder, deps.data_roots)
        except ValueError as exc:
            raise InferenceError(f"folder: {exc}") from None
        if not folder.is_dir():
            raise InferenceError(f"folder {req.folder!r} is not a directory")
        pairs, base = _walk(folder, names), None
    return (_Item(n, p, t, partial(read, p, base)) for n, (p, t) in enumerate(pairs))


_Loaded = tuple[_Item, np.ndarray | None, int | None, str | None]  # item, input, truth, error


def _load(item: _Item, classes: int) -> _Loaded:
    try:
        x, truth = item.load()
        truth = item.truth if truth is None else truth
        if truth is not None and classes and not 0 <= truth < classes:
            raise ValueError(f"label {truth} is not a class index of the model (0..{classes - 1})")
        return item, x, truth, None
    except (ValueError, OSError, IndexError) as exc:
        return item, None, item.truth, f"{item.path or f'image {item.index}'}: {exc}"


async def _load_batch(it: Iterator[_Item], n: int, classes: int) -> list[_Loaded]:
    # One thread hop per batch, not per image: the hops cost more than they overlap on 2 cores.
    return await asyncio.to_thread(lambda: [_load(i, classes) for i in itertools.islice(it, n)])


class _Tally:
    """Counts, skip reasons, inline results, metrics, top N heaps and the results file of a run."""

    def __init__(self, model: LoadedModel, top_k: int = 0, max_results: int = 0, n: int = 0):
        self.model, self.top_k, self.max_results, self.n = model, top_k, max_results, n
        self.count = self.skipped = self.top5 = 0
        self.skip_reasons: list[str] = []
        self.results: list[ImageResult] = []
        self.confusion: np.ndarray | None = None
        self.heaps: list[list[tuple[float, int, int, str | None]]] = []
        self.out: IO[bytes] | None = None

    def add(self, loaded: list[_Loaded], probs: np.ndarray) -> None:
        """Record a batch: the read items' probabilities are ``probs``, in order."""
        rows = iter(probs)
        for item, _x, truth, error in loaded:
            res = ImageResult(index=item.index, path=item.path, error=error)
            if error is not None:
                self.skipped += 1
                self.skip_reasons += [error][: MAX_SKIP_REASONS - len(self.skip_reasons)]
            else:
                p = next(rows)
                self.count += 1
                if truth is not None and 0 <= truth < len(p):
                    if self.confusion is None:
                        self.confusion = np.zeros((len(p), len(p)), np.int64)
                    self.confusion[truth, int(np.argmax(p))] += 1
                    self.top5 += truth in np.argsort(-p, kind="stable")[:5]
                    res.label = self.model.label(truth)
                res.predictions = _top(self.model, p, self.top_k)
                self.results += [res][: self.max_results - len(self.results)]
            if self.out is not None:
                self.out.write(msgspec.json.encode(res) + b"\n")
        if not self.n or not len(probs):
            return
        items = [i for i, _x, _t, e in loaded if e is None]
        self.heaps = self.heaps or [[] for _ in range(probs.shape[1])]
        for j, heap in enumerate(self.heaps):
            for r in np.argsort(-probs[:, j], kind="stable")[: self.n]:
                entry = (float(probs[r, j]), -items[r].index, items[r].index, items[r].path)
                (heapq.heappush if len(heap) < self.n else heapq.heappushpop)(heap, entry)

    def summary(self) -> dict[str, Any]:
        """The reply fields every run has."""
        done = {k: getattr(self, k) for k in ("count", "skipped", "skip_reasons")}
        return done | {"job_id": self.model.job_id, "epoch": self.model.epoch}

    def metrics(self) -> dict[str, Any]:
        """Accuracy, confusion matrix and per-class accuracy, when ground truth was known."""
        if (c := self.confusion) is None:
            return {}
        total, per = int(c.sum()), c.sum(axis=1)
        return {
            "labelled": total,
            "top1_accuracy": float(np.trace(c)) / total,
            "top5_accuracy": self.top5 / total,
            "confusion_matrix": c.tolist(),
            "per_class_accuracy": {
                self.model.label(i): float(c[i, i] / per[i]) for i in range(len(c)) if per[i]
            },
        }


async def _process(model: LoadedModel, it: Iterator[_Item], size: int, tally: _Tally) -> None:
    """Read batch i+1 on threads while batch i is predicted: two batches in memory at most."""

    def start() -> asyncio.Future[list[_Loaded]]:
        return asyncio.ensure_future(_load_batch(it, size, len(model.labels)))

    pending = start()
    try:
        while loaded := await pending:
            pending = start()
            xs = [x for _i, x, _t, e in loaded if e is None]
            probs = await asyncio.to_thread(model.predict, np.stack(xs)) if xs else np.zeros(0)
            tally.add(loaded, probs)
    finally:
        await asyncio.gather(pending, return_exceptions=True)  # a thread may hold the iterator
        with contextlib.suppress(ValueError):  # still running in a cancelled thread: GC closes it
            getattr(it, "close", lambda: None)()


async def classify_many(deps: Deps, req: ClassifyMany) -> ClassifyManyReply:
    """Classify a source batch by batch; every result goes to ``results_url`` as JSON lines."""
    request_id = req.request_id or uuid.uuid4().hex
    if not _REQUEST_ID.match(request_id):
        raise InferenceError(f"request_id {request_id!r} is not 1-64 of A-Z a-z 0-9 . _ -")
    model = await deps.cache.get(req.job_id, req.epoch)
    it = await _items(deps, model, req)
    tally = _Tally(model, req.top_k, req.max_results)
    deps.work_dir.mkdir(parents=True, exist_ok=True)
    key = f"models/{model.job_id}/inference/{request_id}.jsonl"
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", dir=deps.work_dir) as tally.out:
        await _process(model, it, req.batch_size, tally)
        tally.out.flush()
        await deps.store.put_file(key, tally.out.name)
    return ClassifyManyReply(
        request_id=request_id,
        results=tally.results,
        results_url=deps.store.url(key),
        labels=list(model.labels),
        **tally.summary(),
        **tally.metrics(),
    )


async def top_n(deps: Deps, req: TopN) -> TopNReply:
    """The ``n`` images of a source that each class is most confident about."""
    model = await deps.cache.get(req.job_id, req.epoch)
    tally = _Tally(model, n=req.n)
    await _process(model, await _items(deps, model, req), req.batch_size, tally)
    top = {
        model.label(j): [
            TopImage(index=index, path=path, confidence=conf)
            for conf, _, index, path in sorted(heap, key=lambda e: (-e[0], -e[1]))
        ]
        for j, heap in enumerate(tally.heaps or [[] for _ in model.labels])
    }
    return TopNReply(n=req.n, top=top, **tally.summary())
