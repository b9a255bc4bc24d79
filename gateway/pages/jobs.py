"""Job actions as forms: abort, delete (refused while a model uses the dataset), edit, bulk actions.

The commands go over the bus; each action then waits briefly (PAGE_COMMAND_WAIT_S) for the job
record to show the change, so the page that follows is already up to date.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, current_app, flash, g, redirect, render_template, request
from flask.typing import ResponseReturnValue

from digits import events
from digits.jobs import TERMINAL, Job, JobNotFound
from gateway.auth import page_login_required
from gateway.context import bus_client, job_store
from gateway.pages.common import may_change, page
from gateway.pages.jobdata import (
    TABS,
    dependents,
    find_job,
    job_url,
    page_number,
    render_tab,
    status_name,
)
from gateway.runtime import is_htmx
from gateway.runtime import publish as publish_event

bp = Blueprint("jobs", __name__)
Message = tuple[str, str]  # (category, text)
Outcome = tuple[str, str, int]  # (category, text, HTTP status)


def _wait(job_ids: list[str], done: Callable[[Job | None], bool]) -> bool:
    """Wait (bounded) until ``done`` holds for every job record (None once deleted)."""
    deadline = time.monotonic() + float(current_app.config.get("PAGE_COMMAND_WAIT_S", 3.0))
    pending = list(job_ids)
    while pending:
        for job_id in list(pending):
            try:
                job: Job | None = bus_client().call(job_store().get(job_id))
            except JobNotFound:
                job = None
            if done(job):
                pending.remove(job_id)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return not pending


def _refusal(job: Job, verb: str) -> Outcome | None:
    """Why the logged-in user may not ``verb`` the job, if they may not."""
    if not may_change(job.owner):
        text = (
            f"You may not {verb} {job.type} {job.name!r} ({job.id}): only its owner "
            f"({job.owner or 'nobody'}) or an admin may."
        )
        return "error", text, 403
    return None


def _abort(job: Job) -> Outcome:
    refused = _refusal(job, "abort")
    if refused:
        return refused
    if job.status in TERMINAL:
        return "error", f"{job.type.capitalize()} {job.name!r} is already {job.status_name}.", 409
    publish_event(events.JobAbort(job_id=job.id, reason=f"aborted by {g.user.username}"))
    if _wait([job.id], lambda j: j is None or j.status in TERMINAL):
        return "info", f"Aborted {job.type} {job.name!r}.", 200
    return "info", f"Abort of {job.type} {job.name!r} requested.", 202


def _delete(job: Job) -> Outcome:
    refused = _refusal(job, "delete")
    if refused:
        return refused
    users = dependents(job.id)
    if users:
        names = ", ".join(f"{u.type} {u.name!r} ({u.id})" for u in users)
        return "error", f"Cannot delete {job.type} {job.name!r}: it is used by {names}.", 409
    publish_event(events.JobDelete(job_id=job.id))
    if _wait([job.id], lambda j: j is None):
        return "info", f"Deleted {job.type} {job.name!r}.", 200
    return "info", f"Deletion of {job.type} {job.name!r} requested.", 202


def _latest(job: Job) -> Job:
    """The job's record now (the one given, once it is gone)."""
    try:
        return bus_client().call(job_store().get(job.id))
    except JobNotFound:
        return job


def _actions(job: Job, message: Message | None, status: int = 200) -> ResponseReturnValue:
    """The job's action forms with a message (htmx), or the job page with it flashed."""
    if is_htmx():
        html = render_template("jobs/_actions.html", job=job, message=message)
        return html, status
    if message:
        flash(message[1], message[0])
    return redirect(job_url(job), 303)


@bp.post("/jobs/<job_id>/actions/abort")
@page_login_required
def abort(job_id: str) -> ResponseReturnValue:
    """Abort a waiting or running job (its owner or an admin)."""
    job = find_job(job_id)
    category, text, status = _abort(job)
    if category == "info":
        job = _latest(job)
    return _actions(job, (category, text), status)


@bp.post("/jobs/<job_id>/actions/delete")
@page_login_required
def delete(job_id: str) -> ResponseReturnValue:
    """Delete a job, unless a model depends on it (its owner or an admin)."""
    job = find_job(job_id)
    category, text, status = _delete(job)
    if category == "error":
        return _actions(job, (category, text), status)
    flash(text, category)
    if is_htmx():
        return "", 200, {"HX-Redirect": f"/?tab={job.type}s"}
    return redirect(f"/?tab={job.type}s", 303)


def _edit_page(job: Job, errors: dict[str, list[str]], values: dict[str, str], status: int = 200):
    html = page("jobs/edit.html", "jobs/_edit.html", job=job, errors=errors, values=values)
    return html, status


@bp.get("/jobs/<job_id>/edit")
@page_login_required
def edit(job_id: str) -> ResponseReturnValue:
    """The form that changes a job's name, group and notes."""
    job = find_job(job_id)
    values = {"job_name": job.name, "group_name": job.group, "notes": job.notes}
    return _edit_page(job, {}, values)


@bp.post("/jobs/<job_id>/edit")
@page_login_required
def edit_post(job_id: str) -> ResponseReturnValue:
    """Publish job.edit with the changed fields; errors re-render the form (400)."""
    job = find_job(job_id)
    values = {k: request.form.get(k, "") for k in ("job_name", "group_name", "notes")}
    refused = _refusal(job, "edit")
    if refused:
        return _edit_page(job, {"job_name": [refused[1]]}, values, refused[2])
    name, group, notes = values["job_name"].strip(), values["group_name"].strip(), values["notes"]
    errors: dict[str, list[str]] = {}
    if not name:
        errors["job_name"] = [f"job_name {values['job_name']!r} is empty; give the job a name"]
    if len(name) > 200 or len(group) > 200:
        field = "job_name" if len(name) > 200 else "group_name"
        errors[field] = [f"{field} is {len(values[field].strip())} characters; at most 200"]
    if errors:
        return _edit_page(job, errors, values, 400)
    changes = {"name": name, "group": group, "notes": notes}
    changes = {k: v for k, v in changes.items() if getattr(job, k) != v}
    if changes:
        publish_event(events.JobEdit(job_id=job.id, **changes))

        def shown(j: Job | None) -> bool:
            return j is None or all(getattr(j, k) == v for k, v in changes.items())

        saved = _wait([job.id], shown)
        flash("Saved." if saved else "Saved; the page shows it once the job record is updated.")
    if is_htmx():
        return "", 200, {"HX-Redirect": job_url(job)}
    return redirect(job_url(job), 303)


def _bulk(action: str, job_ids: list[str]) -> list[Message]:
    """Carry out ``action`` on each job; one message per job."""
    messages: list[Message] = []
    group = request.form.get("group_name", "").strip()
    edited: list[str] = []
    for job_id in job_ids:
        try:
            job = bus_client().call(job_store().get(job_id))
        except JobNotFound:
            messages.append(("error", f"No job with id {job_id!r}."))
            continue
        if action == "abort":
            messages.append(_abort(job)[:2])
        elif action == "delete":
            messages.append(_delete(job)[:2])
        else:
            refused = _refusal(job, "regroup")
            if refused:
                messages.append(refused[:2])
                continue
            publish_event(events.JobEdit(job_id=job.id, group=group))
            edited.append(job.id)
            messages.append(("info", f"Moved {job.name!r} to group {group or '(none)'!r}."))
    if edited:
        _wait(edited, lambda j: j is None or j.group == group)
    return messages


@bp.post("/jobs/bulk")
@page_login_required
def bulk() -> ResponseReturnValue:
    """Abort, delete or regroup the checked jobs of the home page."""
    tab = request.form.get("tab", "datasets")
    tab = tab if tab in TABS else "datasets"
    action = request.form.get("action", "")
    job_ids = list(dict.fromkeys(request.form.getlist("job_id")))
    status = 200
    if action not in ("abort", "delete", "group"):
        messages: list[Message] = [
            ("error", f"action {action!r} is not one of abort, delete, group")
        ]
        status = 400
    elif not job_ids:
        messages, status = [("error", f"Check at least one job to {action}.")], 400
    else:
        messages = _bulk(action, job_ids)
    if is_htmx():
        return render_tab(tab, messages, page_number(request.form.get("page"))), status
    for category, text in messages:
        flash(text, category)
    return redirect(f"/?tab={tab}", 303)


@bp.app_template_global("job_status_name")
def job_status_name(code: str) -> str:
    """DIGITS's word for a status code, for templates."""
    return status_name(code)
