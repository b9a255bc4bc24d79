"""The model page's inference forms: Classify One, Classify Many, Top N, answered as partials.

The view service answers over NATS request/reply (gateway/inference.py, as for the JSON routes);
each form's result is one partial that htmx swaps into the page, or a whole page without htmx.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from digits import subjects
from digits.inference import MAX_IMAGE_BYTES, MAX_TOTAL_BYTES
from gateway.auth import page_login_required
from gateway.inference import MANY_TIMEOUT_S, ONE_TIMEOUT_S
from gateway.pages.common import (
    InferError,
    ask_or_fail,
    form_epoch,
    infer_failed,
    infer_result,
)
from gateway.pages.jobdata import model_or_ref_404

bp = Blueprint("models_infer", __name__)
THUMB_BYTES = 256 << 10  # uploaded images up to this size are shown back inline
MAX_SHOWN = 1000


def _count(name: str, default: int, lo: int, hi: int) -> int:
    text = request.form.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InferError(f"{name} {text!r} is not an integer", field=name) from None
    if not lo <= value <= hi:
        raise InferError(f"{name} {text!r} is out of range {lo}..{hi}", field=name)
    return value


def _thumb(upload: FileStorage, data: bytes) -> str | None:
    """A data: URL of an uploaded image small enough to show back."""
    if len(data) > THUMB_BYTES:
        return None
    kind = upload.mimetype if (upload.mimetype or "").startswith("image/") else "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _source(payload: dict[str, Any]) -> list[str | None]:
    """Fill the request's image source from the form; the uploaded images' thumbnails."""
    files = [f for f in request.files.getlist("image_files") if f.filename]
    listing = request.files.get("image_list")
    text = listing.read().decode("utf-8", "replace") if listing and listing.filename else ""
    text = text if text.strip() else request.form.get("image_list_text", "")
    thumbs: list[str | None] = []
    if files:
        images, total = [], 0
        for upload in files:
            data = upload.read(MAX_TOTAL_BYTES + 1)
            total += len(data)
            if total > MAX_TOTAL_BYTES:
                raise InferError(
                    f"image_files exceed {MAX_TOTAL_BYTES} bytes together; use an image list",
                    field="image_files",
                )
            images.append(data)
            thumbs.append(_thumb(upload, data))
        payload["images"] = images
    elif text.strip():
        payload["image_list"] = text
        folder = request.form.get("image_folder", "").strip()
        if folder:
            payload["image_folder"] = folder
    elif request.form.get("dataset_stage") in ("val_db", "test_db"):
        payload["dataset_stage"] = request.form["dataset_stage"]
    else:
        raise InferError(
            "give image_list (a file of image paths), image_files or a dataset stage",
            field="image_list",
        )
    return thumbs


@bp.post("/models/<job_id>/classify_one")
@page_login_required
def classify_one(job_id: str) -> ResponseReturnValue:
    """Classify one uploaded image: the top-5 table with confidence bars."""
    job, asked = model_or_ref_404(job_id)
    partial = "models/_classify_one.html"
    try:
        upload = request.files.get("image_file")
        if upload is None or not upload.filename:
            raise InferError("image_file is required (an uploaded image)", field="image_file")
        image = upload.read(MAX_IMAGE_BYTES + 1)
        if len(image) > MAX_IMAGE_BYTES:
            raise InferError(f"image_file exceeds {MAX_IMAGE_BYTES} bytes", field="image_file")
        payload = {"job_id": asked, "epoch": form_epoch(), "image": image, "top_k": 5}
        reply = ask_or_fail(subjects.RPC_INFER_CLASSIFY, payload, ONE_TIMEOUT_S)
    except InferError as exc:
        return infer_failed(job, partial, exc)
    return infer_result(
        job,
        partial,
        filename=upload.filename,
        thumb=_thumb(upload, image),
        epoch=reply.get("epoch"),
        predictions=[(p["label"], 100.0 * float(p["confidence"])) for p in reply["predictions"]],
    )


@bp.post("/models/<job_id>/classify_many")
@page_login_required
def classify_many(job_id: str) -> ResponseReturnValue:
    """Classify a list of images: a results table, accuracy and confusion matrix with labels."""
    job, asked = model_or_ref_404(job_id)
    partial = "models/_classify_many.html"
    try:
        shown = _count("num_test_images", 100, 1, MAX_SHOWN)
        payload: dict[str, Any] = {"job_id": asked, "epoch": form_epoch(), "top_k": 5}
        payload["max_results"] = shown
        thumbs = _source(payload)
        reply = ask_or_fail(subjects.RPC_INFER_MANY, payload, MANY_TIMEOUT_S)
    except InferError as exc:
        return infer_failed(job, partial, exc)
    results = []
    for r in reply.get("results", []):
        index = int(r["index"])
        results.append(
            {
                "name": r.get("path") or f"image {index + 1}",
                "thumb": thumbs[index] if index < len(thumbs) else None,
                "truth": r.get("label"),
                "predictions": [(p["label"], 100.0 * p["confidence"]) for p in r["predictions"]],
            }
        )
    return infer_result(job, partial, reply=reply, results=results)


@bp.post("/models/<job_id>/top_n")
@page_login_required
def top_n(job_id: str) -> ResponseReturnValue:
    """The N images each class is most confident about."""
    job, asked = model_or_ref_404(job_id)
    partial = "models/_top_n.html"
    try:
        n = _count("top_n", 9, 1, 128)
        payload: dict[str, Any] = {"job_id": asked, "epoch": form_epoch(), "n": n}
        thumbs = _source(payload)
        reply = ask_or_fail(subjects.RPC_INFER_TOPN, payload, MANY_TIMEOUT_S)
    except InferError as exc:
        return infer_failed(job, partial, exc)
    top = {
        label: [
            {
                "name": t.get("path") or f"image {int(t['index']) + 1}",
                "thumb": thumbs[int(t["index"])] if int(t["index"]) < len(thumbs) else None,
                "confidence": 100.0 * float(t["confidence"]),
            }
            for t in images
        ]
        for label, images in reply.get("top", {}).items()
    }
    return infer_result(job, partial, reply=reply, top=top, n=n)
