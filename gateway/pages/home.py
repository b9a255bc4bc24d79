"""The home page: datasets and models by group, running jobs with live progress, bulk actions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from digits.jobs import RUNNING, WAITING, Job
from gateway.pages.common import is_htmx, page, page_login_required
from gateway.pages.jobdata import POLL, all_jobs, duration, progress, status_name

bp = Blueprint("home", __name__)
TABS = ("datasets", "models")
ACTIVE = (WAITING, RUNNING)


@bp.app_template_filter("job_time")
def job_time(stamp: float | None) -> str:
    """A Unix time as ``2026-11-26 22:12:10 UTC``."""
    if not stamp:
        return ""
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_global("job_url")
def job_url(job: Job) -> str:
    """The page of a job."""
    return f"/{job.type}s/{job.id}"


def _groups(found: list[Job]) -> list[tuple[str, list[Job]]]:
    """Jobs by group name: the ungrouped ones first, then the groups alphabetically."""
    groups: dict[str, list[Job]] = {}
    for job in found:
        groups.setdefault(job.group, []).append(job)
    return sorted(groups.items(), key=lambda item: (item[0] != "", item[0].lower()))


def _running(found: list[Job]) -> list[dict[str, Any]]:
    return [
        {"job": j, "progress": progress(j), "elapsed": duration(j.created_at, None)}
        for j in found
        if j.status in ACTIVE
    ]


def tab_context(tab: str, messages: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """What the job list of ``tab`` shows."""
    found = all_jobs()
    names = {j.id: j.name for j in found if j.type == "dataset"}
    kind = "dataset" if tab == "datasets" else "model"
    shown = [j for j in found if j.type == kind]
    rows = {
        j.id: {
            "progress": progress(j) if j.status in ACTIVE else None,
            "dataset": (j.depends_on[0], names.get(j.depends_on[0], j.depends_on[0]))
            if j.depends_on
            else None,
        }
        for j in shown
    }
    counts = {t: sum(j.type == t[:-1] for j in found) for t in TABS}
    return {
        "tab": tab,
        "groups": _groups(shown),
        "rows": rows,
        "counts": counts,
        "running": _running(found),
        "messages": messages or [],
        "status_name": status_name,
        "poll": POLL,
    }


def render_tab(tab: str, messages: list[tuple[str, str]] | None = None) -> str:
    """The job list partial of ``tab`` (with action messages, after a bulk action)."""
    return render_template("home/_tab.html", **tab_context(tab, messages))


@bp.get("/")
@page_login_required
def index() -> ResponseReturnValue:
    """Datasets or models (``?tab=models``) grouped by group name, with running jobs on top."""
    tab = request.args.get("tab", "datasets")
    tab = tab if tab in TABS else "datasets"
    return page("home/index.html", "home/_tab.html", **tab_context(tab))


@bp.get("/running")
@page_login_required
def running() -> ResponseReturnValue:
    """The running jobs partial; it polls itself while a job runs, and says when the set changed."""
    found = all_jobs()
    active = _running(found)
    context = {"running": active, "poll": POLL, "status_name": status_name}
    if not is_htmx():
        return page("home/running.html", "home/_running.html", **context)
    html = render_template("home/_running.html", **context)
    shown = {i for i in request.args.get("shown", "").split(",") if i}
    now = {r["job"].id for r in active}
    headers = {"HX-Trigger": "digits-jobs-changed"} if shown != now else {}
    return html, 200, headers
