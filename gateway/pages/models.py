"""Model pages: New Model (classification and generic), the model page, its live partials."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, g, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue

from digits.jobs import STATUS_NAMES, TERMINAL, Job, JobNotFound
from digits.models.augment import FLIPS, QUAD_ROTS
from digits.models.lr_policies import DIGITS_FORM_DEFAULTS
from gateway import model_progress, model_submit, ownership
from gateway.auth import page_login_required
from gateway.context import bus_client, job_store
from gateway.forms import LR_POLICIES, MEANS, NETWORKS, SOLVERS, FormErrors, redacted
from gateway.pages import generic_forms
from gateway.pages.common import may_change, page
from gateway.pages.jobdata import (
    MODEL_POLL,
    find_model,
    last_train_progress,
    model_or_404,
    record_digest,
)
from gateway.runtime import conditional, is_htmx

bp = Blueprint("models", __name__)

# DIGITS's New Model defaults (digits/model/forms.py), by field name.
DEFAULTS: dict[str, Any] = {
    **DIGITS_FORM_DEFAULTS,
    "method": "standard",
    "standard_networks": "lenet",
    "custom_network_type": "json",
    "train_epochs": 30,
    "snapshot_interval": 1,
    "val_interval": 1,
    "batch_accumulation": 1,
    "solver_type": "SGD",
    "use_mean": "image",
    "shuffle": True,
    "early_stopping": 0,
    "aug_flip": "none",
    "aug_quad_rot": "none",
    "aug_rot": 0,
    "aug_scale": 0,
    "aug_noise": 0,
    "aug_hsv_h": 0.02,
    "aug_hsv_s": 0.04,
    "aug_hsv_v": 0.06,
}
CHOICES = {
    "networks": NETWORKS,
    "solvers": SOLVERS,
    "lr_policies": LR_POLICIES,
    "means": MEANS,
    "flips": FLIPS,
    "quad_rots": QUAD_ROTS,
}
PREVIEW_SIZE = (320, 120)
# The snapshot menus that the status partial refreshes when training ends: classify, generic.
SNAPSHOT_IDS = {
    False: ("snapshot-one", "snapshot-many", "snapshot-topn", "snapshot-download"),
    True: ("snapshot-generic", "snapshot-download"),
}


@bp.app_template_filter("model_time")
def model_time(stamp: float) -> str:
    """A Unix time as UTC ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


PICKER_LIMIT = 200  # datasets (and models) a New Model picker lists, newest first


def _snapshots(job: Any) -> list[Any]:
    extra = job.extra
    return list((extra.get("snapshots") if isinstance(extra, dict) else extra.snapshots) or [])


def _with_chosen(found: list[Any], chosen: str, kind: str) -> list[Any]:
    """The picker's jobs, with the chosen one added when it is older than those listed."""
    if not chosen or any(j.id == chosen for j in found):
        return found
    try:
        job = bus_client().get_job(chosen)
    except JobNotFound:
        return found
    return [*found, job] if job.type == kind else found


def _form_context(generic: bool, values: dict[str, Any], errors: dict[str, list[str]]) -> dict:
    """What the New Model form needs: the datasets and models to pick from, values, errors.

    The pickers list the newest PICKER_LIMIT of each (and the chosen ones), so the form costs
    the same with 10,000 jobs; an older one can still be cloned from or named by id in the API.
    """
    job_store()  # 503 while not connected
    client = bus_client()
    mine = ownership.usable()  # the pickers list only what the user may train on
    datasets, dataset_count = client.pick(
        "dataset",
        lambda j: mine(j.owner) and generic != model_submit.is_classification(j),
        PICKER_LIMIT,
    )
    models, model_count = client.pick(
        "model", lambda j: mine(j.owner) and bool(_snapshots(j)), PICKER_LIMIT
    )
    merged = {**DEFAULTS, **values}
    datasets = _with_chosen(list(datasets), str(merged.get("dataset") or ""), "dataset")
    models = _with_chosen(list(models), str(merged.get("previous_networks") or ""), "model")
    action = url_for("models.create_generic" if generic else "models.create_classification")
    return {
        "generic": generic,
        "datasets": datasets,
        "models": models,
        "dataset_count": dataset_count,
        "model_count": model_count,
        "values": merged,
        "errors": errors,
        "action": action,
        "choices": CHOICES,
        "preview": _preview({**DEFAULTS, **values}),
    }


def _new(generic: bool) -> ResponseReturnValue:
    values: dict[str, Any] = {}
    clone = request.args.get("clone", "").strip()
    if clone:
        source = model_or_404(clone, use=None)  # a clone reads the form
        values = {
            **redacted(source.form),
            "dataset": source.depends_on[0] if source.depends_on else "",
        }
        values["model_name"] = f"{source.name} (clone)"
        values["group_name"] = source.group
    if request.args.get("dataset"):
        values["dataset"] = request.args["dataset"]
    return page("models/new.html", "models/_form.html", **_form_context(generic, values, {}))


@bp.get("/models/images/classification/new")
@page_login_required
def new_classification() -> ResponseReturnValue:
    """The New Image Classification Model form (?dataset=<id> preselects, ?clone=<id> copies)."""
    return _new(generic=False)


@bp.get("/models/images/generic/new")
@page_login_required
def new_generic() -> ResponseReturnValue:
    """The New Generic Image Model form, for datasets of the other extensions."""
    return _new(generic=True)


def _received_archive(posted: dict[str, Any], errors: dict[str, list[str]]) -> Path | None:
    """The pretrained archive uploaded with method "pretrained", checked, in a temporary file."""
    posted.pop("pretrained_archive", None)  # only an upload sets it
    upload = request.files.get(model_submit.ARCHIVE_FIELD)
    if posted.get("method") != "pretrained" or upload is None or not upload.filename:
        return None
    # Its store key is known once the whole form is good; the checks see a stand-in.
    posted["pretrained_archive"] = model_submit.UPLOADED
    limit = model_submit.archive_limit()
    if (request.content_length or 0) > limit + (1 << 20):  # the form's other fields are small
        name = model_submit.ARCHIVE_FIELD
        errors[name] = [f"{name} {upload.filename!r} exceeds {limit} bytes"]
        return None
    try:
        return model_submit.receive_archive(upload)
    except FormErrors as exc:
        errors.update(exc.errors)
        return None


def _create(generic: bool) -> ResponseReturnValue:
    posted = request.form.to_dict()
    posted.pop("csrf_token", None)
    errors: dict[str, list[str]] = {}
    archive = _received_archive(posted, errors)
    try:
        try:
            name, dataset, group, checked = model_submit.check(
                posted,
                model_submit.related_jobs(posted),
                generic=generic,
                owner=g.user.username,
                uploading=posted.get("pretrained_archive") == model_submit.UPLOADED,
            )
        except FormErrors as exc:
            errors = {**exc.errors, **errors}
        if errors:
            posted.pop("pretrained_archive", None)
            context = _form_context(generic, posted, errors)
            return page("models/new.html", "models/_form.html", **context), 400
        if archive is not None:
            checked["pretrained_archive"] = model_submit.store_archive(archive, g.user.username)
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
    job_id = model_submit.submit(name, dataset, group, checked, g.user.username)
    target = url_for("models.show", job_id=job_id)
    if is_htmx():
        return "", 204, {"HX-Redirect": target}
    return redirect(target, 303)


@bp.post("/models/images/classification")
@page_login_required
def create_classification() -> ResponseReturnValue:
    """Check the form and publish model.create; on to the model page, or the form with errors."""
    return _create(generic=False)


@bp.post("/models/images/generic")
@page_login_required
def create_generic() -> ResponseReturnValue:
    """Check the generic model form and publish model.create."""
    return _create(generic=True)


def _preview(values: dict[str, Any]) -> dict[str, Any]:
    """The learning-rate preview's context: the SVG polyline, or the error naming the field."""
    try:
        curve = model_progress.lr_curve(values)
    except ValueError as exc:
        return {"error": str(exc)}
    points, top = model_progress.svg_points(curve, *PREVIEW_SIZE)
    return {
        "points": points,
        "top": top,
        "end": curve[-1][1],
        "width": PREVIEW_SIZE[0],
        "height": PREVIEW_SIZE[1],
        "policy": values.get("lr_policy") or DEFAULTS["lr_policy"],
    }


@bp.get("/models/lr_preview")
@page_login_required
def lr_preview() -> ResponseReturnValue:
    """The learning-rate curve of the policy fields in the query (an SVG partial)."""
    values = {k: v for k, v in request.args.items() if v.strip()}
    preview = _preview({**DEFAULTS, **values})
    html = page("models/lr_preview.html", "models/_lr_preview.html", preview=preview)
    return (html, 400) if "error" in preview else html


def _status_context(job: Job, pending: bool) -> dict[str, Any]:
    last = None if pending else last_train_progress(job.id)
    epochs = float(job.form.get("train_epochs") or DEFAULTS["train_epochs"])
    epoch = last.epoch if last else 0.0
    done = job.status in TERMINAL
    return {
        "job": job,
        "pending": pending,
        "running": not done,
        "epoch": epoch,
        "train_epochs": epochs,
        "progress": 1.0 if job.status_name == "Done" else min(epoch / epochs, 1.0),
        "metrics": dict(last.metrics) if last else {},
        "snapshots": [float(s) for s in job.extra.get("snapshots") or []],
        "may_change": may_change(job.owner),
        "snapshot_ids": SNAPSHOT_IDS[
            (job.extension or model_submit.CLASSIFICATION) != model_submit.CLASSIFICATION
        ],
        "status_names": STATUS_NAMES,
        "last": last,
        "poll": MODEL_POLL,
    }


@bp.get("/models/<job_id>")
@page_login_required
def show(job_id: str) -> ResponseReturnValue:
    """The model page: status, graphs, snapshots, inference forms, download, job actions."""
    job, pending = find_model(job_id)
    if job is None:
        abort(404, description=f"no model with id {job_id!r}")
    dataset = None
    if job.depends_on:
        try:
            dataset = bus_client().get_job(job.depends_on[0])
        except JobNotFound:
            dataset = None
    context = _status_context(job, pending)
    generic = None
    if not pending and generic_forms.is_generic(job, dataset):
        generic = generic_forms.context(job, dataset, request.args.get("view_extension"))
    return page(
        "models/show.html",
        "models/_status.html",
        dataset=dataset,
        options=redacted(job.form),
        generic=generic,
        live_url=f"/events?job={job.id}" if context["running"] else None,
        may_use=ownership.may_use(job.owner),
        registry_link=_registry_link(job),
        may_register=not pending and job.status_name == "Done" and may_change(job.owner),
        **context,
    )


def _registry_link(job: Job) -> dict[str, Any] | None:
    """The registered name and version this model job is, if it is one."""
    link = job.extra.get("registry")
    return link if isinstance(link, dict) and "name" in link else None


@bp.get("/models/<job_id>/status")
@page_login_required
def status(job_id: str) -> ResponseReturnValue:
    """The status partial: polls itself every second while the job runs, then stops."""
    job, pending = find_model(job_id)
    if job is None:
        abort(404, description=f"no model with id {job_id!r}")
    context = _status_context(job, pending)
    last = context["last"]
    parts = (g.user.username, record_digest(job), pending, last and last.event_id, is_htmx())
    # The last poll (the job just ended) also refreshes the snapshot menus, out of band.
    return conditional(
        parts,
        lambda: page("models/status.html", "models/_status.html", oob=is_htmx(), **context),
    )


@bp.get("/models/<job_id>/progress.json")
@page_login_required
def progress(job_id: str) -> ResponseReturnValue:
    """Training points after stream sequence ``after``: what the graphs append."""
    job, pending = find_model(job_id)
    if job is None:
        abort(404, description=f"no model with id {job_id!r}")
    text = request.args.get("after", "0")
    try:
        after = int(text)
    except ValueError:
        return jsonify({"error": f"after {text!r} is not an integer (a stream sequence)"}), 400
    client = bus_client()
    assert client.nc is not None
    points, seq, more = [], after, False
    if not pending:
        points, seq, more = client.call(
            model_progress.read(client.nc.jetstream(), job.id, max(after, 0)), timeout=30
        )
    return jsonify(
        {
            "job_id": job.id,
            "status": job.status_name,
            "done": job.status in TERMINAL and not more,
            "seq": seq,
            "more": more,
            "points": points,
        }
    )
