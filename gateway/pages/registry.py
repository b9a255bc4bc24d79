"""Registry pages: the registered models, one model's versions and history, promote, register."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway import registry_ops
from gateway.auth import page_login_required
from gateway.ownership import may_change
from gateway.registry_ops import Outcome, Refused

bp = Blueprint("registry", __name__)


@bp.app_template_filter("version_ref")
def version_ref(number: int | None) -> str:
    """``v3`` for 3, a dash for none."""
    return f"v{number}" if number else "—"


def _model_or_abort(name: str) -> Any:
    try:
        return registry_ops.get(name)
    except Refused as exc:
        abort(exc.code, description=exc.message)


def _show(name: str, outcome: Outcome | None = None, error: str = "", status: int = 200) -> Any:
    model = _model_or_abort(name)
    alias = model.rule.alias if model.rule else "production"
    jobs = [v.job_id for v in model.versions]
    compare = "/models/compare?" + "&".join(f"job_id={j}" for j in jobs) if len(jobs) > 1 else ""
    html = render_template(
        "registry/show.html",
        model=model,
        alias=alias,
        holder=model.aliases.get(alias) or 0,
        may_change=may_change(model.owner),
        compare_url=compare,
        changes=list(reversed(model.changes)),
        outcome=outcome,
        error=error,
    )
    return html, status


@bp.get("/registry")
@page_login_required
def index() -> ResponseReturnValue:
    """Every registered model: name, owner, aliases, latest version."""
    try:
        models = registry_ops.list_models()
    except Refused as exc:
        abort(exc.code, description=exc.message)
    return render_template("registry/index.html", models=models)


@bp.get("/registry/<name>")
@page_login_required
def show(name: str) -> ResponseReturnValue:
    """A registered model: versions with lineage, aliases, rule, follow state, history."""
    return _show(name)


@bp.post("/registry/<name>/promote")
@page_login_required
def promote(name: str) -> ResponseReturnValue:
    """Move an alias by hand (owner or admin); the page again, with the outcome."""
    form = request.form
    try:
        outcome = registry_ops.promote(
            name, form.get("version"), form.get("alias"), form.get("expected")
        )
    except Refused as exc:
        if exc.code == 404:
            abort(404, description=exc.message)
        return _show(name, error=exc.message, status=exc.code)
    return _show(name, outcome, error=outcome.reason, status=outcome.code)


@bp.post("/models/<job_id>/register")
@page_login_required
def register(job_id: str) -> ResponseReturnValue:
    """Register a done model under a name (its owner); the registered model's page."""
    name = (request.form.get("registry_name") or "").strip()
    try:
        outcome = registry_ops.register(name, job_id)
    except Refused as exc:
        if exc.code == 404:
            abort(404, description=exc.message)
        flash(exc.message, "error")
        return redirect(url_for("models.show", job_id=job_id), 303)
    if outcome.code == 200:
        return redirect(url_for("registry.show", name=name), 303)
    if outcome.code == 202:
        flash(f"registering as {name!r} is queued (command {outcome.command_id})", "info")
    else:
        flash(outcome.reason, "error")
    return redirect(url_for("models.show", job_id=job_id), 303)
