"""Dataset pages: new (classification and per plugin), clone, the dataset with live status."""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    render_template_string,
    request,
)
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import CombinedMultiDict

from digits import events
from digits.extensions.data import UnknownExtension, get_extension
from digits.jobs import INITIALIZED, STATUS_NAMES, Job, JobNotFound, new_job_id
from digits.paths import PathNotAllowed, confine
from gateway import registry_ops
from gateway.auth import page_login_required
from gateway.context import bus_client, job_store
from gateway.context import pending as _pending
from gateway.forms import FormErrors, dataset_form, plugin_dataset_form, plugin_form
from gateway.pages import dataset_forms as df
from gateway.pages import dataset_view as dv
from gateway.pages.common import page
from gateway.pages.jobdata import (
    POLL,
    dependents,
    duration,
    find_job,
    is_finished,
    manifest_of,
    open_dataset,
    read_dataset_file,
    record_digest,
    status_name,
)
from gateway.runtime import conditional, is_htmx, publish
from gateway.runtime import sealed as _sealed

bp = Blueprint("datasets", __name__)
CLASSIFICATION = events.CLASSIFICATION


def _done(job_id: str) -> ResponseReturnValue:
    """After a create: the new dataset's page (HX-Redirect for htmx)."""
    if is_htmx():
        return "", 200, {"HX-Redirect": f"/datasets/{job_id}"}
    return redirect(f"/datasets/{job_id}", 303)


def _submit(name: str, group: str, form: dict[str, Any], extension: str) -> str:
    """Publish dataset.create (credentials sealed first); the new job's id."""
    job_id = new_job_id()
    owner = g.user.username
    sealed = _sealed(form, owner)
    publish(
        events.DatasetCreate(
            name=name, extension=extension, form=sealed, group=group, owner=owner, job_id=job_id
        )
    )
    summary = {"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]}
    _pending().add(job_id, summary | {"type": "dataset", "owner": owner, "group": group})
    return job_id


# --- image classification -----------------------------------------------------------------


def _classification_form(
    values: dict[str, str],
    errors: dict[str, list[str]] | None = None,
    clone: Job | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    context = {
        "values": values,
        "errors": errors or {},
        "clone": clone,
        "uploads": df.upload_lines(clone) if clone else {},
        "resize_choices": df.RESIZE_CHOICES,
        "encoding_choices": df.ENCODING_CHOICES,
    }
    return page("datasets/new.html", "datasets/_form.html", **context), status


@bp.get("/datasets/images/classification/new")
@page_login_required
def new_classification() -> ResponseReturnValue:
    """DIGITS's New Image Classification Dataset form (folder, text files or S3)."""
    return _classification_form(df.new_values())


@bp.post("/datasets/images/classification")
@page_login_required
def create_classification() -> ResponseReturnValue:
    """Check the form and publish dataset.create; errors re-render it (400)."""
    raw: dict[str, Any] = request.form.to_dict()
    for name, upload in request.files.items():
        if name in df.UPLOADS and upload.filename:
            raw[name] = upload.read().decode("utf-8", "replace")
    clone_id = raw.get("clone_of", "")
    clone = _clone_source(clone_id) if clone_id else None
    for key in df.PAGE_ONLY:
        raw.pop(key, None)
    try:
        name, group, checked = dataset_form(raw)
        df.deep_check(checked)
        checked = df.reused_secret(checked, clone, g.user.username)
        job_id = _submit(name, group, checked, CLASSIFICATION)
    except FormErrors as exc:
        values = df.posted_values(raw)
        if clone is not None:
            values["clone_of"] = clone.id
        return _classification_form(values, exc.errors, clone, 400)
    return _done(job_id)


def _clone_source(job_id: str) -> Job | None:
    try:
        job = bus_client().call(job_store().get(job_id))
    except JobNotFound:
        return None
    return job if job.type == "dataset" else None


@bp.get("/datasets/<job_id>/clone")
@page_login_required
def clone(job_id: str) -> ResponseReturnValue:
    """The new-dataset form filled in from a dataset job (never its credentials)."""
    job = find_job(job_id, "dataset")
    if job.extension and job.extension != CLASSIFICATION:
        return _generic_page(job.extension, data=job.form, clone=job)
    return _classification_form(df.clone_values(job), clone=job)


# --- data plugins -------------------------------------------------------------------------


def _extension(extension_id: str) -> Any:
    try:
        return get_extension(extension_id)
    except UnknownExtension as exc:
        abort(404, description=str(exc))


def _generic_page(
    extension_id: str,
    form: Any = None,
    data: dict[str, Any] | None = None,
    errors: dict[str, list[str]] | None = None,
    own: dict[str, str] | None = None,
    clone: Job | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    """The plugin's own template for its form, inside the page's form and frame."""
    extension = _extension(extension_id)
    if form is None:
        form = plugin_form(extension, data=data)
    source, context = extension.get_dataset_template(form)
    plugin_html = render_template_string(source, **context)
    own = own or ({"dataset_name": clone.name, "group_name": clone.group} if clone else {})
    html = page(
        "datasets/generic_new.html",
        "datasets/_generic_form.html",
        extension_id=extension_id,
        title=extension.get_title(),
        plugin_html=plugin_html,
        errors=errors or {},
        own=own,
        clone=clone,
    )
    return html, status


@bp.get("/datasets/generic/new/<extension_id>")
@page_login_required
def new_generic(extension_id: str) -> ResponseReturnValue:
    """A data plugin's New Dataset form, rendered from its own template."""
    return _generic_page(extension_id)


@bp.post("/datasets/generic/create/<extension_id>")
@page_login_required
def create_generic(extension_id: str) -> ResponseReturnValue:
    """Validate the plugin's form and publish dataset.create; errors re-render it (400)."""
    extension = _extension(extension_id)
    form = plugin_form(extension, CombinedMultiDict([request.form, request.files]))
    own = {k: request.form.get(k, "") for k in ("dataset_name", "group_name")}
    try:
        name, group, data = plugin_dataset_form(form, request.form)
        job_id = _submit(name, group, data, extension_id)
    except FormErrors as exc:
        return _generic_page(extension_id, form=form, errors=exc.errors, own=own, status=400)
    return _done(job_id)


# --- the dataset page ---------------------------------------------------------------------


def _status_context(job: Job) -> dict[str, Any]:
    finished = is_finished(job)
    manifest = manifest_of(job) if job.status == "D" else None
    stages = [
        {
            "stage": s,
            "status": status_name(s.status),
            "pct": round(100 * min(max(s.progress, 0.0), 1.0)),
            "took": duration(s.started_at, s.finished_at),
        }
        for s in job.stages
    ]
    return {
        "job": job,
        "finished": finished,
        "poll": POLL,
        "stages": stages,
        "status_name": status_name,
        "manifest": manifest,
        "histogram": dv.histogram(manifest) if manifest else None,
        "skip_reasons": list(job.extra.get("skip_reasons", []))[:20],
    }


def _pending_job(job_id: str) -> Job:
    """A dataset this gateway submitted that no service has stored yet, else a 404."""
    summary = _pending().get(job_id)
    if summary is None or summary["type"] != "dataset":
        abort(404, description=f"no dataset with id {job_id!r}")
    return Job(id=job_id, type="dataset", name=summary["name"], owner=summary["owner"])


def _dataset(job_id: str) -> Job:
    try:
        job = bus_client().call(job_store().get(job_id))
    except JobNotFound:
        return _pending_job(job_id)
    if job.type != "dataset":
        abort(404, description=f"no dataset with id {job_id!r}")
    return job


def _registered(job_id: str) -> list[Any]:
    """The registered models that follow this dataset or were trained on it (none while the
    registry is unreadable)."""
    try:
        return registry_ops.trained_on(job_id)
    except (registry_ops.Refused, TimeoutError):
        return []


def versions_of(job: Job, models: list[Any]) -> list[dict[str, Any]]:
    """The dataset's versions, newest first: when each was finalized, what it added, its counts,
    and the registered model versions trained on it (``name vN`` with their aliases)."""
    listed = list(job.extra.get("versions") or [])
    finalized = int(job.extra.get("finalized") or 0)
    if not listed and finalized:  # a record from before versions were listed: the current one
        listed = [{"version": finalized, "counts": job.extra.get("counts") or {}}]
    trained: dict[int, list[dict[str, Any]]] = {}
    for model in models:
        for v in model.versions:
            if v.dataset_id == job.id:
                shown = {"name": model.name, "version": v.version}
                trained.setdefault(v.dataset_version, []).append(
                    {**shown, "aliases": model.aliases_of(v.version), "state": v.state}
                )
    rows = [{**v, "models": trained.get(int(v.get("version", 0)), [])} for v in listed]
    current = int(job.extra.get("version") or 1)
    if current > finalized:  # being ingested now
        rows.append({"version": current, "building": True, "models": trained.get(current, [])})
    return sorted(rows, key=lambda r: -int(r.get("version", 0)))


@bp.get("/datasets/<job_id>")
@page_login_required
def show(job_id: str) -> ResponseReturnValue:
    """The dataset: settings, live status and stages, then counts, histogram, mean, explore."""
    job = _dataset(job_id)
    context = _status_context(job)
    context["models"] = dependents(job.id)
    registered = _registered(job.id)
    context["followers"] = [m for m in registered if m.follow and m.follow.dataset_id == job.id]
    context["versions"] = versions_of(job, registered)
    context["form"] = {k: v for k, v in df.shown_values(job.form).items() if k not in df.UPLOADS}
    live = None if context["finished"] else f"/events?job={job.id}"
    return page("datasets/show.html", "datasets/_status.html", live_url=live, **context)


@bp.get("/datasets/<job_id>/status")
@page_login_required
def status(job_id: str) -> ResponseReturnValue:
    """The status region: it polls itself until the job has finished."""
    if not is_htmx():
        return show(job_id)
    job = _dataset(job_id)
    # Running stages show how long they took so far: while active, the second is part of it.
    ticking = 0 if is_finished(job) else int(time.time())
    parts = (g.user.username, record_digest(job), ticking)
    return conditional(
        parts, lambda: render_template("datasets/_status.html", **_status_context(job))
    )


# --- explore, mean image, resize preview --------------------------------------------------


def _int_arg(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    text = request.values.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        abort(400, description=f"{name} {text!r} is not an integer")
    if value < lo or (hi is not None and value > hi):
        abort(
            400, description=f"{name} {value} is out of range {lo}..{hi if hi is not None else ''}"
        )
    return value


@bp.get("/datasets/<job_id>/explore")
@page_login_required
def explore(job_id: str) -> ResponseReturnValue:
    """A page of thumbnails of one stage, of one label if asked (``?stage=&label=&page=``)."""
    job = find_job(job_id, "dataset")
    manifest = manifest_of(job)
    if manifest is None:
        abort(404, description=f"dataset {job.id} has no files yet (it is {job.status_name})")
    stages = manifest.stage_names()
    stage = request.args.get("stage", stages[0] if stages else "train_db")
    if stage not in stages:
        abort(404, description=f"dataset {job.id} has no stage {stage!r}; it has {stages}")
    label = _int_arg("label", None, 0, max(len(manifest.labels) - 1, 0))
    total = dv.stage_total(manifest, stage, label)
    pages = max(1, -(-total // dv.PAGE_SIZE))
    page_no = _int_arg("page", 1, 1, pages) or 1
    data = open_dataset(job)
    thumbs = dv.gallery(data.shard_paths(stage), manifest.labels, label, page_no)
    context = {
        "job": job,
        "manifest": manifest,
        "stage": stage,
        "stages": stages,
        "label": label,
        "page_no": page_no,
        "pages": pages,
        "total": total,
        "thumbs": thumbs,
    }
    return page("datasets/explore.html", "datasets/_gallery.html", **context)


@bp.get("/datasets/<job_id>/mean.png")
@page_login_required
def mean_png(job_id: str) -> ResponseReturnValue:
    """The dataset's mean image, from the artifact store."""
    job = find_job(job_id, "dataset")
    manifest = manifest_of(job)
    key = manifest.mean.get("png") if manifest else None
    data = read_dataset_file(job, key) if key else None
    if data is None:
        abort(404, description=f"dataset {job.id} has no mean image")
    headers = {"Cache-Control": "private, max-age=3600"}
    return Response(data, mimetype="image/png", headers=headers)


@bp.route("/datasets/images/resize", methods=["GET", "POST"])
@page_login_required
def resize_preview() -> ResponseReturnValue:
    """An image resized as the form's settings would: an upload, a path, or the first image."""
    try:
        png = _preview_png()
    except (ValueError, PathNotAllowed) as exc:
        if is_htmx():
            return render_template("datasets/_preview.html", error=str(exc)), 400
        return Response(str(exc), status=400, mimetype="text/plain")
    if is_htmx():
        return render_template("datasets/_preview.html", src=dv.png_data_uri(png), error=None)
    return Response(png, mimetype="image/png")


def _preview_png() -> bytes:
    width = _int_arg("resize_width", 256, 1) or 256
    height = _int_arg("resize_height", 256, 1) or 256
    channels = _int_arg("resize_channels", 3, 1, 3) or 3
    if channels not in (1, 3):
        raise ValueError(f"resize_channels {channels} is not one of 1, 3")
    mode = request.values.get("resize_mode", "squash") or "squash"
    if mode not in dict(df.RESIZE_CHOICES):
        raise ValueError(f"resize_mode {mode!r} is not one of {', '.join(dict(df.RESIZE_CHOICES))}")
    upload = request.files.get("preview_image")
    if upload is not None and upload.filename:
        return dv.resized_png(upload.read(), width, height, channels, mode)
    roots = current_app.config["SETTINGS"].data_roots
    path = request.values.get("preview_path", "").strip()
    if path:
        return dv.resized_png(confine(path, roots), width, height, channels, mode)
    folder = request.values.get("folder_train", "").strip()
    found = dv.first_image(folder, roots) if folder else None
    if found is None:
        raise ValueError("give an image (preview_image or preview_path) or a folder_train with one")
    return dv.resized_png(found, width, height, channels, mode)
