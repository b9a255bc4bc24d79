"""DIGITS's JSON API: the same routes and field names, so DIGITS-era scripts keep working."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue

from digits import events, subjects
from digits.jobs import (
    INITIALIZED,
    STATUS_NAMES,
    TERMINAL,
    Job,
    JobNotFound,
    new_job_id,
)
from gateway import model_submit, ownership
from gateway.accounts import AccountError
from gateway.auth import api_login_required, current_user
from gateway.context import accounts_of
from gateway.context import bus_client as _bus
from gateway.context import job_store as _jobs
from gateway.context import pending as _pending
from gateway.forms import (
    dataset_form,
    plugin_dataset_form,
    plugin_form,
    redacted,
)
from gateway.jobcache import JobSummary
from gateway.runtime import json_errors
from gateway.runtime import publish as _publish
from gateway.runtime import sealed as _sealed

bp = Blueprint("api", __name__)


PER_PAGE, MAX_PER_PAGE = 100, 1000  # /index.json's default and largest page


def _summary(job: Job | JobSummary) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status_name,
        "status_code": job.status,
        "type": job.type,
        "extension": job.extension,
        "group": job.group,
        "owner": job.owner,
        "submitted": job.created_at,
    }


def _details(job: Job) -> dict[str, Any]:
    found = _summary(job) | {
        "notes": job.notes,
        "error": job.error,
        "form": redacted(job.form),
        "status_history": [[STATUS_NAMES.get(h.status, h.status), h.at] for h in job.history],
        "stages": [
            {
                "name": s.name,
                "status": STATUS_NAMES.get(s.status, s.status),
                "progress": s.progress,
                "done": s.done,
                "total": s.total,
                "counts": s.counts,
            }
            for s in job.stages
        ],
    }
    if job.type == "dataset":
        found["labels"] = job.extra.get("labels", [])
        found["counts"] = job.extra.get("counts", {})
    return found


def _job(job_id: str, kind: str | None = None) -> Job:
    """The job, or a JSON 404 naming its id (the wrong type counts as unknown)."""
    try:
        job = _bus().call(_jobs().get(job_id))
    except JobNotFound:
        job = None
    if job is None or (kind is not None and job.type != kind):
        abort(404, description=f"no {kind or 'job'} with id {job_id!r}")
    return job


def _pending_or_404(job_id: str, kind: str) -> ResponseReturnValue:
    summary = _pending().get(job_id)
    if summary is None or summary["type"] != kind:
        abort(404, description=f"no {kind} with id {job_id!r}")
    return jsonify(summary)


def _last_progress(job_id: str) -> events.TrainProgress | None:
    bus_client = _bus()
    assert bus_client.nc is not None
    js = bus_client.nc.jetstream()
    subject = subjects.evt_job(job_id, "train.progress")
    try:
        msg = bus_client.call(js.get_last_msg(subjects.STREAM_EVT, subject))
    except (nats.js.errors.NotFoundError, nats.errors.Error):
        return None
    try:
        return events.decode(msg.data, events.TrainProgress)
    except ValueError:
        return None


def _form_data() -> dict[str, Any]:
    """The posted form fields (a JSON object body works too)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="the JSON body must be an object of form fields")
        return body
    return request.form.to_dict()


def _may_change(job: Job) -> None:
    if not ownership.may_change(job.owner):
        abort(403, description=f"only the owner of job {job.id} or an admin may change it")


json_errors(bp)


@bp.errorhandler(TimeoutError)
def bus_timeout(exc: TimeoutError) -> ResponseReturnValue:
    """The bus did not answer in time."""
    return jsonify({"error": f"the message bus did not answer in time: {exc}"}), 504


@bp.get("/index.json")
@api_login_required
def index() -> ResponseReturnValue:
    """Dataset and model jobs, newest first, as DIGITS's home page JSON, a page at a time.

    ``?page=`` (from 1) and ``?per_page=`` (1 to MAX_PER_PAGE) page both lists alike; ``total``
    counts each list and ``next`` is the URL of the next page (null on the last).
    """
    _jobs()  # 503 while not connected
    page, per_page = _positive("page", 1), _positive("per_page", PER_PAGE)
    if per_page > MAX_PER_PAGE:
        abort(400, description=f"per_page {per_page} exceeds {MAX_PER_PAGE}")
    offset = (page - 1) * per_page
    datasets = _bus().listing("dataset", offset, per_page)
    models = _bus().listing("model", offset, per_page)
    more = offset + per_page < max(datasets.total, models.total)
    return jsonify(
        {
            "datasets": [_summary(j) for j in datasets.jobs],
            "models": [_summary(j) for j in models.jobs],
            "page": page,
            "per_page": per_page,
            "total": {"datasets": datasets.total, "models": models.total},
            "next": f"/index.json?page={page + 1}&per_page={per_page}" if more else None,
        }
    )


def _positive(name: str, default: int) -> int:
    text = request.args.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        abort(400, description=f"{name} {text!r} is not a positive integer")
    return value


@bp.post("/datasets/images/classification.json")
@api_login_required
def create_dataset() -> ResponseReturnValue:
    """Check the form and publish dataset.create; the new job's id."""
    form = _form_data()
    for name, upload in request.files.items():
        if name.startswith("textfile_"):
            form[name] = upload.read().decode("utf-8", "replace")
    name, group, checked = dataset_form(form)
    job_id = new_job_id()
    owner = current_user().username
    sealed = _sealed(checked, owner)  # S3 keys never travel in a command
    _publish(events.DatasetCreate(name=name, form=sealed, group=group, owner=owner, job_id=job_id))
    summary = {"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]}
    _pending().add(job_id, summary | {"type": "dataset", "owner": owner, "group": group})
    return jsonify(summary)  # 200, as DIGITS answered


@bp.post("/datasets/generic/create/<extension_id>.json")
@api_login_required
def create_generic_dataset(extension_id: str) -> ResponseReturnValue:
    """Check a data plugin's form and publish dataset.create with its data; the new job's id."""
    from werkzeug.datastructures import CombinedMultiDict, MultiDict

    from digits.extensions.data import UnknownExtension, get_extension

    try:
        extension = get_extension(extension_id)
    except UnknownExtension as exc:
        abort(404, description=str(exc))
    fields = MultiDict(_form_data())
    form = plugin_form(extension, CombinedMultiDict([fields, request.files]))
    name, group, checked = plugin_dataset_form(form, fields)
    job_id = new_job_id()
    owner = current_user().username
    sealed = _sealed(checked, owner)
    _publish(
        events.DatasetCreate(
            name=name,
            extension=extension_id,
            form=sealed,
            group=group,
            owner=owner,
            job_id=job_id,
        )
    )
    summary = {"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]}
    _pending().add(job_id, summary | {"type": "dataset", "owner": owner, "group": group})
    return jsonify(summary)


@bp.get("/datasets/<job_id>.json")
@api_login_required
def show_dataset(job_id: str) -> ResponseReturnValue:
    """A dataset job: status, stages, counts, labels."""
    try:
        job = _bus().call(_jobs().get(job_id))
    except JobNotFound:
        return _pending_or_404(job_id, "dataset")
    if job.type != "dataset":
        abort(404, description=f"no dataset with id {job_id!r}")
    return jsonify(_details(job))


@bp.post("/models/images/classification.json")
@api_login_required
def create_model() -> ResponseReturnValue:
    """Check the form and publish model.create; the new job's id."""
    form = _form_data()
    name, dataset, group, checked = model_submit.check(
        form, model_submit.related_jobs(form), generic=False, owner=current_user().username
    )
    job_id = model_submit.submit(name, dataset, group, checked, current_user().username)
    return jsonify({"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]})  # as DIGITS


@bp.get("/models/<job_id>.json")
@api_login_required
def show_model(job_id: str) -> ResponseReturnValue:
    """A model job: status, snapshots, training progress."""
    try:
        job = _bus().call(_jobs().get(job_id))
    except JobNotFound:
        return _pending_or_404(job_id, "model")
    if job.type != "model":
        abort(404, description=f"no model with id {job_id!r}")
    found = _details(job)
    epochs = job.form.get("train_epochs") or 30
    last = _last_progress(job_id)
    epoch = last.epoch if last else 0.0
    found |= {
        "dataset_id": job.depends_on[0] if job.depends_on else None,
        "snapshots": job.extra.get("snapshots", []),
        "train_epochs": epochs,
        "epoch": epoch,
        "progress": 1.0 if job.status_name == "Done" else min(epoch / float(epochs), 1.0),
        "metrics": dict(last.metrics) if last else {},
    }
    return jsonify(found)


@bp.get("/jobs/<job_id>/status")
@api_login_required
def job_status(job_id: str) -> ResponseReturnValue:
    """A job's status, as JSON."""
    try:
        job = _bus().call(_jobs().get(job_id))
    except JobNotFound:
        summary = _pending().get(job_id)
        if summary is None:
            abort(404, description=f"no job with id {job_id!r}")
        return jsonify({"id": job_id, "status": summary["status"], "type": summary["type"]})
    return jsonify(
        {"id": job.id, "status": job.status_name, "type": job.type, "error": job.error or None}
    )


@bp.delete("/jobs/<job_id>")
@api_login_required
def delete_job(job_id: str) -> ResponseReturnValue:
    """Publish job.delete (the owner or an admin only)."""
    job = _job(job_id)
    _may_change(job)
    users = _bus().dependents(job.id)
    if users:
        names = ", ".join(f"{u.name} ({u.id})" for u in users)
        abort(409, description=f"cannot delete {job.type} {job.id}: used by {names}")
    _publish(events.JobDelete(job_id=job.id))
    return jsonify({"id": job.id, "deleting": True})


@bp.post("/jobs/<job_id>/abort")
@api_login_required
def abort_job(job_id: str) -> ResponseReturnValue:
    """Publish job.abort (the owner or an admin only)."""
    job = _job(job_id)
    _may_change(job)
    if job.status in TERMINAL:
        abort(409, description=f"job {job.id} is already {job.status_name}")
    reason = f"aborted by {current_user().username}"
    _publish(events.JobAbort(job_id=job.id, reason=reason))
    return jsonify({"id": job.id, "aborting": True})


@bp.post("/api/v1/tokens")
@api_login_required
def create_token() -> ResponseReturnValue:
    """A new API token for the authenticated user (the token is shown only here)."""
    name = str((request.get_json(silent=True) or {}).get("name") or request.form.get("name", ""))
    token_id, token = accounts_of().create_token(current_user().username, name)
    return jsonify({"id": token_id, "token": token, "name": name}), 201


@bp.delete("/api/v1/tokens/<token_id>")
@api_login_required
def revoke_token(token_id: str) -> ResponseReturnValue:
    """Revoke one of the authenticated user's tokens."""
    if not accounts_of().revoke_token(current_user().username, token_id):
        abort(404, description=f"no token with id {token_id!r}")
    return jsonify({"id": token_id, "revoked": True})


@bp.post("/api/v1/users")
@api_login_required
def create_user() -> ResponseReturnValue:
    """Create a user (admins only): JSON or form ``username``, ``password``, ``is_admin``."""
    if not current_user().is_admin:
        abort(403, description="only an admin may create users")
    data = request.get_json(silent=True) or request.form.to_dict()
    is_admin = str(data.get("is_admin", "")).lower() in ("1", "true", "on", "yes", "y")
    try:
        user = accounts_of().create_user(
            str(data.get("username") or ""), str(data.get("password") or ""), is_admin=is_admin
        )
    except AccountError as exc:
        abort(400, description=str(exc))
    return jsonify({"username": user.username, "is_admin": user.is_admin}), 201
