"""Generic inference: one or many inputs through a model, rendered by a view extension.

Inputs come as encoded images, as samples of the model's dataset (``db``), or through a data
extension's inference form (DIGITS's "inference database"): its ``itemize_entries(TEST_DB)``
and ``encode_entry`` run here with ``is_inference_db=True``. Each input's outputs go to the view's
``process_data``; its header and view templates come back as HTML fragments.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from digits import dataset as datasets
from digits.extensions import data as data_extensions
from digits.extensions import view as view_extensions
from digits.extensions.view.interface import DatasetInfo
from digits.extensions.view.rendering import Inference, Rendered, ViewError, render
from digits.inference import DEFAULT_VIEWS, MAX_INPUTS, MAX_TOTAL_BYTES, RAW_VIEW
from digits.jobs import JobNotFound
from digits.store import NotFoundError
from digits.utils.constants import TEST_DB
from digits.utils.image import ImageError
from view_service.model_data import model_dataset, shard_samples
from view_service.models import Deps, InferenceError, LoadedModel, softmax

PREDICT_BATCH = 16
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class InferGeneric(msgspec.Struct, kw_only=True):
    """Run a model on inputs and render them with a view extension."""

    job_id: str  # the model job, or a registry ref: name@alias, name@vN
    epoch: float = -1.0  # the snapshot's epoch; -1: the latest
    view_extension: str = ""  # a view id; empty: image-segmentation or all-outputs, by task
    view_config: dict[str, Any] = msgspec.field(default_factory=dict)  # the view's form fields
    images: list[bytes] | None = None  # encoded images
    data_extension: str | None = None  # with ``form``; empty: the dataset's extension
    # The data extension's inference form fields; a file is bytes, or {filename, data: bytes}.
    form: dict[str, Any] | None = None
    db: Literal["val", "test"] | None = None  # samples of the model's own dataset
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_INPUTS)] = 16  # inputs at most


class InferGenericReply(msgspec.Struct, kw_only=True):
    """The outputs of every input and the view's HTML."""

    ok: bool = True
    job_id: str  # the model job
    epoch: float  # the snapshot's epoch that answered
    ref: str | None = None  # the registry ref asked for (name@alias, name@vN), if one was
    version: int | None = None  # the registered version that answered it
    task: str  # classification, segmentation or regression
    view_extension: str  # the view that rendered the HTML
    input_ids: list[str]  # one per input
    outputs: list[Any]  # per input: class map (segmentation), vector, or class probabilities
    header_html: str | None  # the view's header, rendered once
    views_html: list[str]  # the view of each input


def _check_view(req: InferGeneric, model: LoadedModel) -> str:
    ext_id = req.view_extension or DEFAULT_VIEWS.get(model.task, RAW_VIEW)
    try:
        view_extensions.get_extension(ext_id)
    except view_extensions.UnknownExtension as exc:
        raise InferenceError(str(exc)) from None
    return ext_id


async def _dataset_info(deps: Deps, model: LoadedModel) -> DatasetInfo:
    job_form: dict[str, Any] = {}
    extension = ""
    if model.dataset_id:
        try:
            job = await deps.cache.jobs.get(model.dataset_id)
            job_form, extension = dict(job.form), job.extension
        except JobNotFound:
            pass
    manifest: dict[str, Any] = {}
    try:
        raw = await deps.store.get(f"datasets/{model.dataset_id or '-'}/manifest.json")
        manifest = json.loads(raw)
    except (NotFoundError, ValueError):
        pass
    return DatasetInfo(
        job_id=model.dataset_id,
        extension_id=extension or str(manifest.get("extension") or ""),
        labels=list(model.labels),
        extension_userdata=job_form,
        feature_dtype=str(manifest.get("feature_dtype") or "uint8"),
        extra=dict(manifest.get("extra") or {}),
    )


Item = tuple[str, np.ndarray, Any]  # input id, feature as the dataset stores it, ground truth


def _from_images(model: LoadedModel, images: list[bytes], limit: int) -> list[Item]:
    items = []
    for n, image in enumerate(images[:limit]):
        try:
            items.append((f"image {n}", model.feature(image), None))
        except ImageError as exc:
            raise InferenceError(f"image {n}: {exc}") from None
    return items


def _from_db(paths: list[Path], limit: int) -> list[Item]:
    raws = itertools.islice(itertools.chain.from_iterable(map(shard_samples, paths)), limit)
    items = []
    for n, raw in enumerate(raws):
        feature, label = datasets.decode_sample(raw)
        items.append((f"sample {n}", feature, label))
    return items


def _upload(value: Any) -> tuple[str, bytes] | None:
    """``(filename, data)`` if a form value is a file: bytes, or a map {filename, data: bytes}."""
    if isinstance(value, bytes):
        return "", value
    if isinstance(value, dict) and isinstance(value.get("data"), bytes):
        return str(value.get("filename") or ""), value["data"]
    return None


def _write_files(form: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The form with each uploaded file written under ``folder`` and replaced by its path."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        upload = _upload(value)
        if upload is None:
            out[key] = value
            continue
        name, data = upload
        safe = _SAFE_NAME.sub("_", Path(name).name).strip("._") or _SAFE_NAME.sub("_", key)
        path = folder / _SAFE_NAME.sub("_", key) / safe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[key] = str(path)
    return out


def _from_extension(ext_id: str, kwargs: dict[str, Any], limit: int) -> list[Item]:
    """Entries of the data extension's inference database, encoded (blocking: plugin code)."""
    cls = data_extensions.get_extension(ext_id)
    where = f"data extension {ext_id!r}"
    try:
        ext = cls(is_inference_db=True, **kwargs)
        entries = list(ext.itemize_entries(TEST_DB))
    except Exception as exc:  # plugin code: any failure is the request's problem
        raise InferenceError(f"{where}: {type(exc).__name__}: {exc}") from None
    if not entries:
        raise InferenceError(f"{where} found nothing to infer in the form")
    items: list[Item] = []
    for n, entry in enumerate(entries):
        try:
            encoded = ext.encode_entry(entry)
        except Exception as exc:
            raise InferenceError(f"{where}: entry {n}: {type(exc).__name__}: {exc}") from None
        pairs = encoded if isinstance(encoded, list) else [encoded]
        for k, (feature, _label) in enumerate(pairs):
            name = Path(entry).name if isinstance(entry, str) else f"entry {n}"
            items.append((name if len(pairs) == 1 else f"{name} [{k}]", np.asarray(feature), None))
            if len(items) >= limit:
                return items
    return items


async def _items(deps: Deps, model: LoadedModel, req: InferGeneric) -> list[Item]:
    given = [req.images is not None, req.form is not None, req.db is not None]
    if sum(given) != 1:
        raise InferenceError("give exactly one input source: images, form (a data extension's), db")
    if req.images is not None:
        if (total := sum(len(i) for i in req.images)) > MAX_TOTAL_BYTES:
            raise InferenceError(f"images of {total} bytes exceed {MAX_TOTAL_BYTES} bytes")
        if not req.images:
            raise InferenceError("images is empty")
        return await asyncio.to_thread(_from_images, model, req.images, req.limit)
    if req.db is not None:
        stage = f"{req.db}_db"
        ds = await model_dataset(deps, model, stage)
        return await asyncio.to_thread(_from_db, ds.shard_paths(stage), req.limit)
    return await _from_form(deps, model, req)


async def _from_form(deps: Deps, model: LoadedModel, req: InferGeneric) -> list[Item]:
    form = dict(req.form or {})
    size = sum(len(up[1]) for v in form.values() if (up := _upload(v)) is not None)
    if size > MAX_TOTAL_BYTES:
        raise InferenceError(f"files of {size} bytes exceed {MAX_TOTAL_BYTES} bytes")
    dataset_form: dict[str, Any] = {}
    ext_id = req.data_extension or ""
    if model.dataset_id:
        try:
            job = await deps.cache.jobs.get(model.dataset_id)
            dataset_form, ext_id = dict(job.form), ext_id or job.extension
        except JobNotFound:
            pass
    if not ext_id:
        raise InferenceError("data_extension is missing and the model's dataset names none")
    try:
        data_extensions.get_extension(ext_id)
    except data_extensions.UnknownExtension as exc:
        raise InferenceError(str(exc)) from None
    folder = deps.work_dir / "uploads" / uuid.uuid4().hex
    try:
        folder.mkdir(parents=True)
        # The dataset's own form first (as DIGITS did), the inference form's fields over it;
        # paths are confined to the data roots (as at ingest) and the uploads.
        kwargs = {**dataset_form, **_write_files(form, folder)}
        kwargs["data_roots"] = [*deps.data_roots, str(folder)]
        return await asyncio.to_thread(_from_extension, ext_id, kwargs, req.limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _predict(model: LoadedModel, items: list[Item]) -> list[np.ndarray]:
    xs = []
    for name, feature, _truth in items:
        try:
            xs.append(model.prepare(feature))
        except ValueError as exc:
            raise InferenceError(f"{name}: {exc} (the model was trained on that shape)") from None
    out: list[np.ndarray] = []
    for start in range(0, len(xs), PREDICT_BATCH):
        out.extend(model.predict_raw(np.stack(xs[start : start + PREDICT_BATCH])))
    return out


def _plain(model: LoadedModel, raw: np.ndarray) -> tuple[np.ndarray, Any]:
    """What the view sees (probabilities for classes) and what the reply carries (plain lists)."""
    if model.task == "segmentation":
        probs = softmax(raw)
        return probs, np.argmax(probs, axis=-1).astype(np.int32).tolist()
    if model.task == "classification":
        probs = softmax(raw.reshape(-1))
        return probs, probs.tolist()
    return raw, raw.tolist()


async def infer_generic(deps: Deps, req: InferGeneric) -> InferGenericReply:
    """Infer the inputs and render them with the view extension."""
    model = await deps.cache.get(req.job_id, req.epoch)
    view_id = _check_view(req, model)
    info = await _dataset_info(deps, model)
    items = await _items(deps, model, req)
    raws = await asyncio.to_thread(_predict, model, items)
    pairs = [_plain(model, r) for r in raws]
    inferences = [
        Inference(name, feature, {model.output_name: seen}, truth)
        for (name, feature, truth), (seen, _out) in zip(items, pairs, strict=True)
    ]
    try:
        rendered: Rendered = await asyncio.to_thread(
            render, view_id, dict(req.view_config), info, inferences
        )
    except (ViewError, view_extensions.UnknownExtension) as exc:
        raise InferenceError(str(exc)) from None
    return InferGenericReply(
        job_id=model.job_id,
        epoch=model.epoch,
        task=model.task,
        view_extension=view_id,
        input_ids=[name for name, _f, _t in items],
        outputs=[out for _seen, out in pairs],
        header_html=rendered.header_html,
        views_html=rendered.views_html,
    )
