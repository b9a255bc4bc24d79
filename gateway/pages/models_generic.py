"""Generic models on the model page: the data plugin's inference form, a view, its rendered results.

The inference form and the view's config form are the plugins' own Flask-WTF forms and Jinja
templates, rendered inside the page; the view service (``digits.v1.rpc.infer.generic``) runs the
model and answers with the view's HTML, which the result partial inserts as it is.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from flask import (
    Blueprint,
    current_app,
    redirect,
    render_template,
    render_template_string,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from digits import subjects
from digits.extensions import data as data_extensions
from digits.extensions import view as view_extensions
from digits.jobs import Job, JobNotFound
from digits.store import StoreError
from gateway.pages.common import bus_client, is_htmx, job_store, page_login_required
from gateway.pages.models import _job_or_404
from gateway.pages.models_infer import MAX_TOTAL_BYTES, InferError, _ask, _epoch, _failed, _render

bp = Blueprint("models_generic", __name__)
CLASSIFICATION = "image-classification"
# As view_service/generic.py chooses when a request names no view.
DEFAULT_VIEWS = {"segmentation": "image-segmentation"}
RAW_VIEW = "all-outputs"
TIMEOUT_S = 120.0
MAX_LIMIT = 64  # the view service's bound on the inputs of one request
# Fields of the page itself: the rest of a POST is the data plugin's inference form.
OWN_FIELDS = ("csrf_token", "snapshot_epoch", "view_extension", "source", "limit", "plugin_form")
OWN_FILES = ("image_file", "upload_file")
RESULT = "models/_generic_result.html"


def is_generic(job: Job, dataset: Job | None) -> bool:
    """Whether a model (or its dataset) is of an extension other than image classification."""
    if (job.extension or CLASSIFICATION) != CLASSIFICATION:
        return True
    return dataset is not None and (dataset.extension or CLASSIFICATION) != CLASSIFICATION


def _dataset_of(job: Job) -> Job | None:
    if not job.depends_on:
        return None
    try:
        return bus_client().call(job_store().get(job.depends_on[0]))
    except JobNotFound:
        return None


def _task(job: Job) -> str:
    """The model's task, from its info.json in the store (or its form while it trains)."""
    from gateway.models_api import _store

    store = _store()
    try:
        raw = bus_client().call(store.get(f"models/{job.id}/info.json"), timeout=30)
        return str(json.loads(raw).get("task") or "")
    except (StoreError, ValueError, TimeoutError):
        return str(job.form.get("task") or "")


def _views() -> list[tuple[str, str]]:
    """(id, title) of every view extension offered in the web UI."""
    found = []
    for ext_id, cls in view_extensions.get_extensions().items():
        try:
            if cls.get_default_visibility():
                found.append((ext_id, str(cls.get_title())))
        except Exception:  # a plugin's metadata may fail: offer it by its id
            found.append((ext_id, ext_id))
    return found


def _inference_form(dataset: Job) -> tuple[Any, Any]:
    """(the data extension's class, its inference form or None); ValueError says why not."""
    cls = data_extensions.get_extension(dataset.extension or CLASSIFICATION)
    method = inspect.getattr_static(cls, "get_inference_form", None)
    if isinstance(method, staticmethod | classmethod):
        return cls, cls.get_inference_form()
    # An instance method (as Sunnybrook's: it lists the dataset's validation records): the
    # extension is built from the dataset's form, its paths confined to this gateway's roots.
    form = {k: v for k, v in dataset.form.items() if k not in ("data_roots", "is_inference_db")}
    roots = list(current_app.config["SETTINGS"].data_roots)
    return cls, cls(data_roots=roots, **form).get_inference_form()


def _plugin_form(dataset: Job | None) -> dict[str, Any]:
    """The inference form's HTML from the plugin's own template, or why there is none."""
    if dataset is None:
        return {"html": None, "note": "the model's dataset is gone", "fields": []}
    ext_id = dataset.extension or CLASSIFICATION
    try:
        cls, form = _inference_form(dataset)
        if form is None:
            return {"html": None, "note": None, "fields": []}
        source, context = cls.get_inference_template(form)
        html = Markup(render_template_string(source, **(context or {})))
    except NotImplementedError:
        return {"html": None, "note": None, "fields": []}
    except Exception as exc:  # plugin code: say what failed, keep the page
        note = f"data extension {ext_id!r}: no inference form: {type(exc).__name__}: {exc}"
        return {"html": None, "note": note, "fields": []}
    text = [
        f.name for f in form if f.type in ("StringField", "FileField") and f.name != "csrf_token"
    ]
    return {"html": html, "note": None, "fields": text}


def _config(view_id: str) -> dict[str, Any]:
    """The view's config form from its own template (html None without one), or the error."""
    try:
        cls = view_extensions.get_extension(view_id)
        form = cls.get_config_form()
        if form is None:
            return {"html": None, "error": None}
        source, context = cls.get_config_template(form)
        html = Markup(render_template_string(source, **(context or {}))) if source else None
        return {"html": html, "error": None}
    except view_extensions.UnknownExtension as exc:
        return {"html": None, "error": str(exc)}
    except Exception as exc:  # a failing plugin
        return {"html": None, "error": f"view {view_id!r}: {type(exc).__name__}: {exc}"}


def _config_fields(view_id: str) -> list[str]:
    """The names of the view's config form fields (none if it has no form)."""
    try:
        form = view_extensions.get_extension(view_id).get_config_form()
    except Exception:
        return []
    return [f.name for f in form if f.name != "csrf_token"] if form is not None else []


def context(job: Job, dataset: Job | None, view_id: str | None = None) -> dict[str, Any]:
    """What _generic_infer.html needs: plugin form, views, the chosen view's config."""
    default = DEFAULT_VIEWS.get(_task(job), RAW_VIEW)
    views = _views()
    chosen = view_id if view_id in {v for v, _ in views} else default
    return {
        "plugin": _plugin_form(dataset),
        "views": views,
        "view_id": chosen,
        "default_view": default,
        "config": _config(chosen),
        "max_limit": MAX_LIMIT,
    }


@bp.get("/models/<job_id>/generic/view_config")
@page_login_required
def view_config(job_id: str) -> ResponseReturnValue:
    """The chosen view's config form (a partial); without htmx, the model page with that view."""
    job = _job_or_404(job_id)
    view_id = request.args.get("view_extension", "").strip()
    if not is_htmx():
        target = url_for("models.show", job_id=job.id, view_extension=view_id or None)
        return redirect(f"{target}#generic-infer", 303)
    view_id = view_id or DEFAULT_VIEWS.get(_task(job), RAW_VIEW)
    return render_template(
        "models/_generic_view_config.html", config=_config(view_id), view_id=view_id
    )


def _limit() -> int:
    text = request.form.get("limit", "").strip()
    if not text:
        return 16
    try:
        value = int(text)
    except ValueError:
        raise InferError(f"limit {text!r} is not an integer", field="limit") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InferError(f"limit {text!r} is out of range 1..{MAX_LIMIT}", field="limit")
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
    skip = {*OWN_FIELDS, *_config_fields(view_id)}
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
    payload: dict[str, Any] = {"job_id": job.id, "epoch": _epoch(), "limit": _limit()}
    if view_id:
        payload["view_extension"] = view_id
        config = {k: request.form[k] for k in _config_fields(view_id) if k in request.form}
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
    job = _job_or_404(job_id)
    dataset = _dataset_of(job)
    try:
        plugin = dataset is not None and request.form.get("plugin_form") == "1"
        payload = _payload(job, plugin)
        reply = _ask(subjects.RPC_INFER_GENERIC, payload, TIMEOUT_S)
    except InferError as exc:
        return _failed(job, RESULT, exc)
    results = list(zip(reply.get("input_ids") or [], reply.get("views_html") or [], strict=False))
    return _render(job, RESULT, reply=reply, results=results)
