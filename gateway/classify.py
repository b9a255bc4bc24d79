"""DIGITS's classify_one.json and classify_many.json, answered by the view service over NATS."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
from flask import Blueprint, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from digits import subjects
from digits.jobs import JobNotFound
from gateway.auth import login_required
from gateway.forms import FormErrors
from gateway.runtime import json_errors

bp = Blueprint("classify", __name__)
MAX_IMAGE_BYTES = 8 << 20  # as the view service's ClassifyOne
ONE_TIMEOUT_S = 60.0
MANY_TIMEOUT_S = 300.0


def _percent(p: dict[str, Any]) -> list[Any]:
    return [p["label"], round(100.0 * float(p["confidence"]), 2)]


def _model_id(form: dict[str, Any]) -> str:
    job_id = str(form.get("job_id") or "").strip()
    if not job_id:
        raise FormErrors({"job_id": ["job_id is required (the model job's id)"]})
    from gateway.app import bus_of

    bus_client = bus_of(current_app)
    assert bus_client.jobs is not None
    try:
        job = bus_client.call(bus_client.jobs.get(job_id))
    except JobNotFound:
        job = None
    if job is None or job.type != "model":
        abort(404, description=f"no model with id {job_id!r}")
    return job_id


def _epoch(form: dict[str, Any]) -> float:
    text = str(form.get("snapshot_epoch") or "").strip()
    if not text:
        return -1.0
    try:
        return float(text)
    except ValueError:
        raise FormErrors({"snapshot_epoch": [f"snapshot_epoch {text!r} is not a number"]}) from None


def _request(subject: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Ask the view service; its error becomes a 400, no responder a 503."""
    from gateway.app import bus_of

    bus_client = bus_of(current_app)
    nc = bus_client.nc
    if nc is None or not nc.is_connected:
        abort(503, description="not connected to NATS")
    data = msgspec.msgpack.encode(payload)
    try:
        msg = bus_client.call(nc.request(subject, data, timeout=timeout), timeout=timeout + 5)
    except nats.errors.NoRespondersError:
        abort(503, description="no view service is running to answer inference requests")
    except (TimeoutError, nats.errors.TimeoutError):
        abort(504, description=f"the view service did not answer within {timeout:g}s")
    reply = msgspec.msgpack.decode(msg.data)
    if not reply.get("ok", False):
        abort(400, description=str(reply.get("error") or "inference failed"))
    return reply


json_errors(bp)


@bp.post("/models/images/classification/classify_one.json")
@login_required
def classify_one() -> ResponseReturnValue:
    """Classify one uploaded ``image_file``: DIGITS's {"predictions": [[label, percent], ...]}."""
    form = request.form.to_dict()
    upload = request.files.get("image_file")
    if upload is None or not upload.filename:
        raise FormErrors({"image_file": ["image_file is required (an uploaded image)"]})
    image = upload.read(MAX_IMAGE_BYTES + 1)
    if len(image) > MAX_IMAGE_BYTES:
        raise FormErrors({"image_file": [f"image_file exceeds {MAX_IMAGE_BYTES} bytes"]})
    job_id, epoch = _model_id(form), _epoch(form)
    payload = {"job_id": job_id, "epoch": epoch, "image": image, "top_k": 5}
    reply = _request(subjects.RPC_INFER_CLASSIFY, payload, ONE_TIMEOUT_S)
    return jsonify(
        {
            "predictions": [_percent(p) for p in reply["predictions"]],
            "job_id": reply.get("job_id", job_id),
            "snapshot_epoch": reply.get("epoch"),
        }
    )


@bp.post("/models/images/classification/classify_many.json")
@login_required
def classify_many() -> ResponseReturnValue:
    """Classify the images of an uploaded ``image_list``: {"classifications": {path: ...}}."""
    form = request.form.to_dict()
    upload = request.files.get("image_list")
    text = upload.read().decode("utf-8", "replace") if upload is not None else ""
    if not text.strip():
        text = str(form.get("image_list") or "")
    if not text.strip():
        raise FormErrors({"image_list": ["image_list is required (a file of image paths)"]})
    job_id, epoch = _model_id(form), _epoch(form)
    payload: dict[str, Any] = {"job_id": job_id, "epoch": epoch, "image_list": text, "top_k": 5}
    if str(form.get("image_folder") or "").strip():
        payload["image_folder"] = str(form["image_folder"]).strip()
    reply = _request(subjects.RPC_INFER_MANY, payload, MANY_TIMEOUT_S)
    found = {
        "classifications": {
            r.get("path") or str(r["index"]): [_percent(p) for p in r.get("predictions", [])]
            for r in reply.get("results", [])
        },
        "count": reply.get("count", 0),
        "skipped": reply.get("skipped", 0),
        "skip_reasons": reply.get("skip_reasons", []),
        "job_id": reply.get("job_id", job_id),
        "snapshot_epoch": reply.get("epoch"),
    }
    for name in ("top1_accuracy", "top5_accuracy", "confusion_matrix", "labels"):
        if reply.get(name) is not None:
            found[name] = reply[name]
    return jsonify(found)
