"""DIGITS's classify_one.json and classify_many.json, answered by the view service over NATS."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from digits import subjects
from digits.inference import MAX_IMAGE_BYTES
from gateway.auth import api_login_required
from gateway.forms import FormErrors
from gateway.inference import (
    MANY_TIMEOUT_S,
    ONE_TIMEOUT_S,
    ask_view,
    model_id,
    snapshot_epoch,
)
from gateway.runtime import json_errors

bp = Blueprint("classify", __name__)


def _percent(p: dict[str, Any]) -> list[Any]:
    return [p["label"], round(100.0 * float(p["confidence"]), 2)]


json_errors(bp)


@bp.post("/models/images/classification/classify_one.json")
@api_login_required
def classify_one() -> ResponseReturnValue:
    """Classify one uploaded ``image_file``: DIGITS's {"predictions": [[label, percent], ...]}."""
    form = request.form.to_dict()
    upload = request.files.get("image_file")
    if upload is None or not upload.filename:
        raise FormErrors({"image_file": ["image_file is required (an uploaded image)"]})
    image = upload.read(MAX_IMAGE_BYTES + 1)
    if len(image) > MAX_IMAGE_BYTES:
        raise FormErrors({"image_file": [f"image_file exceeds {MAX_IMAGE_BYTES} bytes"]})
    job_id, epoch = model_id(form), snapshot_epoch(form)
    payload = {"job_id": job_id, "epoch": epoch, "image": image, "top_k": 5}
    reply = ask_view(subjects.RPC_INFER_CLASSIFY, payload, ONE_TIMEOUT_S)
    return jsonify(
        {
            "predictions": [_percent(p) for p in reply["predictions"]],
            "job_id": reply.get("job_id", job_id),
            "snapshot_epoch": reply.get("epoch"),
        }
    )


@bp.post("/models/images/classification/classify_many.json")
@api_login_required
def classify_many() -> ResponseReturnValue:
    """Classify the images of an uploaded ``image_list``: {"classifications": {path: ...}}."""
    form = request.form.to_dict()
    upload = request.files.get("image_list")
    text = upload.read().decode("utf-8", "replace") if upload is not None else ""
    if not text.strip():
        text = str(form.get("image_list") or "")
    if not text.strip():
        raise FormErrors({"image_list": ["image_list is required (a file of image paths)"]})
    job_id, epoch = model_id(form), snapshot_epoch(form)
    payload: dict[str, Any] = {"job_id": job_id, "epoch": epoch, "image_list": text, "top_k": 5}
    if str(form.get("image_folder") or "").strip():
        payload["image_folder"] = str(form["image_folder"]).strip()
    reply = ask_view(subjects.RPC_INFER_MANY, payload, MANY_TIMEOUT_S)
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
