"""Model JSON routes beside the pages: generic model create, and the model archive download."""

from __future__ import annotations

import math
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request
from flask.typing import ResponseReturnValue

from digits import subjects
from digits.inference import MAX_IMAGE_BYTES
from digits.jobs import INITIALIZED, STATUS_NAMES, Job
from digits.models.layout import (
    MEAN_FILES,
    MODEL_FILES,
    SAVED_MODEL,
    model_key,
    snapshot_key,
    snapshot_name,
)
from digits.store import Store
from gateway import model_submit
from gateway.auth import api_login_required, page_or_api_login_required
from gateway.busclient import BusClient
from gateway.context import artifact_store, bus_client
from gateway.forms import FormErrors
from gateway.inference import ONE_TIMEOUT_S, ask_view, model_id, model_job, snapshot_epoch
from gateway.runtime import json_errors

bp = Blueprint("models_api", __name__)
FORMATS = {"tar.gz": "application/gzip", "zip": "application/zip"}


json_errors(bp)


@bp.post("/models/images/generic.json")
@api_login_required
def create_generic() -> ResponseReturnValue:
    """Check a generic model form (DIGITS's field names) and publish model.create."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="the JSON body must be an object of form fields")
        form = {k: v if isinstance(v, str) else str(v) for k, v in body.items()}
    else:
        form = request.form.to_dict()
    name, dataset, group, checked = model_submit.check(
        form, model_submit.related_jobs(form), generic=True, owner=g.user.username
    )
    job_id = model_submit.submit(name, dataset, group, checked, g.user.username)
    return jsonify({"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]})


def _epochs(job: Job) -> list[float]:
    """The snapshots the request asks for: ``epoch`` (default the latest) or ``all``."""
    snapshots = [float(s) for s in job.extra.get("snapshots") or []]
    if not snapshots:
        abort(404, description=f"model {job.id} has no snapshot yet")
    if request.args.get("all") in ("1", "true", "on") or request.args.get("epoch") == "all":
        return snapshots
    text = (request.args.get("epoch") or "").strip()
    if not text or text == "-1":
        return snapshots[-1:]
    try:
        wanted = float(text)
    except ValueError:
        abort(400, description=f"epoch {text!r} is not a number (or 'all')")
    found = [s for s in snapshots if math.isclose(s, wanted, abs_tol=5e-5)]
    if not found:
        shown = ", ".join(f"{s:g}" for s in snapshots)
        abort(404, description=f"model {job.id} has no snapshot at epoch {text}; it has {shown}")
    return found


class _Chunks:
    """A write-only file whose bytes are handed on as they come (tarfile's stream mode)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        """Keep a chunk."""
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        """The chunks written since the last drain."""
        parts, self.parts = self.parts, []
        yield from parts

    def flush(self) -> None:
        """Nothing buffered here (zipfile flushes when it closes)."""


def _entries(job: Job, epochs: list[float]) -> list[tuple[str, str]]:
    """(name in the archive, store key) of every file that exists."""
    client, store = bus_client(), artifact_store()
    wanted = [(name, model_key(job.id, name)) for name in MODEL_FILES]
    wanted += [(snapshot_name(e), snapshot_key(job.id, e)) for e in epochs]
    if job.depends_on:
        wanted += [(name, f"datasets/{job.depends_on[0]}/{name}") for name in MEAN_FILES]
    # The SavedModel is the final model's: it comes with the latest snapshot only.
    snapshots = [float(s) for s in job.extra.get("snapshots") or []]
    exported = model_key(job.id, SAVED_MODEL)
    with_export = bool(snapshots) and any(math.isclose(e, snapshots[-1]) for e in epochs)

    async def existing() -> list[tuple[str, str]]:
        found = [(name, key) for name, key in wanted if await store.exists(key)]
        if with_export:
            found += [
                (key.removeprefix(f"models/{job.id}/"), key) for key in await store.list(exported)
            ]
        return found

    found = client.call(existing(), timeout=60)
    if not any(name.endswith(".keras") for name, _ in found):
        abort(404, description=f"model {job.id}: the snapshot files are missing from the store")
    return found


def _stream(
    entries: list[tuple[str, str]], fmt: str, client: BusClient, store: Store
) -> Iterator[bytes]:
    """The archive of ``entries`` in ``fmt``, chunk by chunk, one store file at a time."""
    out = _Chunks()
    archive: Any
    if fmt == "zip":  # an unseekable stream: sizes and CRCs go in data descriptors
        archive = zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED)  # type: ignore[arg-type]
    else:
        archive = tarfile.open(fileobj=out, mode="w|gz")  # type: ignore[call-overload]
    with archive:
        for name, key in entries:
            with tempfile.NamedTemporaryFile(prefix="digits-download-") as tmp:
                client.call(store.get_file(key, tmp.name), timeout=600)
                if fmt == "zip":
                    archive.write(tmp.name, arcname=name)
                else:
                    archive.add(tmp.name, arcname=name, recursive=False)
            yield from out.drain()
    yield from out.drain()


@bp.get("/models/<job_id>/download")
@bp.get("/models/<job_id>/download.<any('tar.gz', zip):fmt>")
@page_or_api_login_required
def download(job_id: str, fmt: str = "tar.gz") -> ResponseReturnValue:
    """The model archive (.tar.gz or .zip): snapshot(s), SavedModel, info, labels, mean."""
    job = model_job(job_id, use="download")
    epochs = _epochs(job)
    entries = _entries(job, epochs)
    tag = "all" if len(epochs) > 1 else f"epoch_{epochs[0]:g}"
    filename = f"{job.id}_{tag}.{fmt}"
    return Response(
        _stream(entries, fmt, bus_client(), artifact_store()),
        mimetype=FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.post("/models/images/generic/infer_one.json")
@api_login_required
def generic_infer_one() -> ResponseReturnValue:
    """Run a generic model on one uploaded ``image_file``: its outputs, as DIGITS answered."""
    form = request.form.to_dict()
    upload = request.files.get("image_file")
    if upload is None or not upload.filename:
        raise FormErrors({"image_file": ["image_file is required (an uploaded image)"]})
    image = upload.read(MAX_IMAGE_BYTES + 1)
    if len(image) > MAX_IMAGE_BYTES:
        raise FormErrors({"image_file": [f"image_file exceeds {MAX_IMAGE_BYTES} bytes"]})
    payload: dict[str, Any] = {
        "job_id": model_id(form),
        "epoch": snapshot_epoch(form),
        "images": [image],
    }
    if form.get("view_extension"):
        payload["view_extension"] = form["view_extension"]
    reply = ask_view(subjects.RPC_INFER_GENERIC, payload, ONE_TIMEOUT_S)
    outputs = reply.get("outputs") or [None]
    return jsonify(
        {
            "outputs": outputs[0],
            "task": reply.get("task"),
            "job_id": reply.get("job_id"),
            "snapshot_epoch": reply.get("epoch"),
        }
    )
