"""The compare page: 2-8 models' training curves on the same axes, and the same as JSON."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, jsonify, redirect, render_template, request
from flask.typing import ResponseReturnValue

from gateway.auth import page_login_required, page_or_api_login_required
from gateway.pages.runs import MAX_RUNS, CompareError, compare
from gateway.runtime import is_htmx

bp = Blueprint("compare", __name__)
PALETTE = ("#2563eb", "#76b900", "#dc2626", "#9333ea", "#b7791f", "#0891b2", "#db2777", "#4b5563")


def _asked() -> list[str]:
    return [v.strip() for v in request.args.getlist("job_id") if v.strip()]


@bp.get("/models/compare")
@page_login_required
def show() -> ResponseReturnValue:
    """The chosen models (repeated ``job_id``) side by side; the form again with any error."""
    asked = _asked()
    if set(request.args) - {"job_id"} or len(asked) != len(request.args.getlist("job_id")):
        # The home page's job list sends its whole form: answer with the plain URL.
        plain = "/models/compare?" + urlencode([("job_id", i) for i in asked])
        return ("", 204, {"HX-Redirect": plain}) if is_htmx() else redirect(plain, 303)
    context: dict[str, Any] = {"asked": asked, "palette": PALETTE, "max_runs": MAX_RUNS}
    try:
        context["data"] = compare(asked)
    except CompareError as exc:
        return render_template("models/compare.html", error=str(exc), data=None, **context), 400
    return render_template("models/compare.html", error=None, **context)


@bp.get("/models/compare.json")
@page_or_api_login_required
def show_json() -> ResponseReturnValue:
    """The comparison as JSON: each run's curves, best and final metrics; differing options."""
    try:
        return jsonify(compare(request.args.getlist("job_id")))
    except CompareError as exc:
        return jsonify({"error": str(exc)}), 400
