"""Generic models on the model page: running the data plugin's inference form through a view.

The forms themselves (the data plugin's inference form, the views, a view's config form) are
built by ``generic_forms``; the view service (``digits.v1.rpc.infer.generic``) runs the model and
answers with the view's HTML, which the result partial inserts as it is.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from digits import subjects
from digits.inference import DEFAULT_VIEWS, MAX_INPUTS, MAX_TOTAL_BYTES, RAW_VIEW
from digits.jobs import Job
from gateway.auth import page_login_required
from gateway.pages.common import (
    InferError,
    ask_or_fail,
    form_epoch,
    infer_failed,
    infer_result,
)
from gateway.pages.generic_forms import (
    config_fields,
    config_form,
    dataset_of,
    task_of,
)
from gateway.pages.jobdata import model_or_404, model_or_ref_404
from gateway.runtime import is_htmx

bp = Blueprint("models_generic", __name__)
TIMEOUT_S = 120.0
# Fields of the page itself: the rest of a POST is the data plugin's inference form.
OWN_FIELDS = ("csrf_token", "snapshot_epoch", "view_extension", "source", "limit", "plugin_form")
OWN_FILES = ("image_file", "upload_file")
RESULT = "models/_generic_result.html"


@bp.get("/models/<job_id>/generic/view_config")
@page_login_required
def view_config(job_id: str) -> ResponseReturnValue:
    """The chosen view's config form (a partial); without htmx, the model page with that view."""
    job = model_or_404(job_id)
    view_id = request.args.get("view_extension", "").strip()
    if not is_htmx():
        target = url_for("models.show", job_id=job.id, view_extension=view_id or None)
        return redirect(f"{target}#generic-infer", 303)
    view_id = view_id or DEFAULT_VIEWS.get(task_of(job), RAW_VIEW)
    return render_template(
        "models/_generic_view_config.html", config=config_form(view_id), view_id=view_id
    )


def _limit() -> int:
    text = request.form.get("limit", "").strip()
    if not text:
        return 16
    try:
        value = int(text)
    except ValueError:
        raise InferError(f"limit {text!r} is not an integer", field="limit") from None
    if not 1 <= value <= MAX_INPUTS:
        raise InferError(f"limit {text!r} is out of range 1..{MAX_INPUTS}", field="limit")
    return value


class _Budget:
    """The bytes of the request's uploads, bounded as the view service bounds them."""

    def __init__(self) -> None:
        self.total = 0

    def read(self, name: str) -> dict[str, Any] | None:
        """An uploaded file of the form as {filename, data}, or None when none was given."""
        upload = request.files.get(name)
        if upload is None or not upload.filename:
            return None
        data = upload.read(MAX_TOTAL_BYTES - self.total + 1)
        self.total += len(data)
        if self.total > MAX_TOTAL_BYTES:
            raise InferError(f"{name}: the uploads exceed {MAX_TOTAL_BYTES} bytes", field=name)
        return {"filename": upload.filename, "data": data}


def _plugin_fields(view_id: str, budget: _Budget) -> dict[str, Any]:
    """The data plugin's inference form fields of the POST; uploaded files as {filename, data}."""
    skip = {*OWN_FIELDS, *config_fields(view_id)}
    form: dict[str, Any] = {k: v for k, v in request.form.items() if k not in skip}
    for name in request.files:
        if name not in OWN_FILES and (upload := budget.read(name)) is not None:
            form[name] = upload
    target = request.form.get("upload_field", "").strip()
    form.pop("upload_field", None)
    upload = budget.read("upload_file")
    if upload is not None:
        if not target:
            raise InferError(
                "upload_field: name the form field the file is for", field="upload_field"
            )
        form[target] = upload
    return form


def _payload(job: Job, plugin: bool) -> dict[str, Any]:
    """The RPC request of the POST: snapshot, view and its config, one source of inputs."""
    view_id = request.form.get("view_extension", "").strip()
    payload: dict[str, Any] = {"job_id": job.id, "epoch": form_epoch(), "limit": _limit()}
    if view_id:
        payload["view_extension"] = view_id
        config = {k: request.form[k] for k in config_fields(view_id) if k in request.form}
        payload["view_config"] = config
    source = request.form.get("source", "one")
    budget = _Budget()
    if source in ("val", "test"):
        payload["db"] = source
    elif source != "one":
        raise InferError(f"source {source!r} is not one of one, val, test", field="source")
    elif (image := budget.read("image_file")) is not None:
        payload["images"] = [image["data"]]
    elif plugin:
        payload["form"] = _plugin_fields(view_id, budget)
    else:
        raise InferError("image_file is required (an uploaded input image)", field="image_file")
    return payload


@bp.post("/models/<job_id>/infer_generic")
@page_login_required
def infer(job_id: str) -> ResponseReturnValue:
    """Run the model on the form's input (or its validation set); the view's HTML as a partial."""
    job, asked = model_or_ref_404(job_id)
    dataset = dataset_of(job)
    try:
        plugin = dataset is not None and request.form.get("plugin_form") == "1"
        payload = {**_payload(job, plugin), "job_id": asked}  # a ref: the view follows it
        reply = ask_or_fail(subjects.RPC_INFER_GENERIC, payload, TIMEOUT_S)
    except InferError as exc:
        return infer_failed(job, RESULT, exc)
    results = list(zip(reply.get("input_ids") or [], reply.get("views_html") or [], strict=False))
    return infer_result(job, RESULT, reply=reply, results=results)
