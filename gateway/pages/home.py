"""The home page: datasets and models by group, running jobs with live progress, bulk actions."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from gateway.auth import page_login_required
from gateway.pages.common import page
from gateway.pages.jobdata import (
    TABS,
    job_time,
    job_url,
    listing,
    page_number,
    running_panel,
    tab_context,
)
from gateway.runtime import is_htmx

bp = Blueprint("home", __name__)
bp.add_app_template_filter(job_time, "job_time")
bp.add_app_template_global(job_url, "job_url")


@bp.get("/")
@page_login_required
def index() -> ResponseReturnValue:
    """Datasets or models (``?tab=models``) grouped by group name, with running jobs on top."""
    tab = request.args.get("tab", "datasets")
    tab = tab if tab in TABS else "datasets"
    context = tab_context(tab, page=page_number(request.args.get("page")))
    return page("home/index.html", "home/_tab.html", live_url="/events", **context)


@bp.get("/running")
@page_login_required
def running() -> ResponseReturnValue:
    """The running jobs partial; it polls itself while a job runs, and says when the set changed."""
    found = listing("dataset", 0, 0)
    panel = running_panel(found.active, found.revision)
    if not is_htmx():
        return render_template("home/running.html", running_panel=panel)
    shown = {i for i in request.args.get("shown", "").split(",") if i}
    now = {j.id for j in found.active}
    headers = {"HX-Trigger": "digits-jobs-changed"} if shown != now else {}
    return panel, 200, headers
