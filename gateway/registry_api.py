"""The model registry's JSON routes: list, show, register and promote (through commands)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue

from gateway import registry_ops
from gateway.auth import api_login_required
from gateway.registry_ops import Refused
from gateway.runtime import json_errors

bp = Blueprint("registry_api", __name__)
json_errors(bp)


@bp.errorhandler(Refused)
def refused(exc: Refused) -> ResponseReturnValue:
    """A request refused before any command was sent."""
    return jsonify({"error": exc.message}), exc.code


def _body() -> dict[str, Any]:
    """The JSON object (or form) posted."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="the JSON body must be an object")
        return body
    return request.form.to_dict()


def _answer(outcome: registry_ops.Outcome) -> ResponseReturnValue:
    return jsonify(outcome.as_json()), outcome.code


@bp.get("/registry.json")
@api_login_required
def index() -> ResponseReturnValue:
    """Every registered model: name, owner, aliases, latest version."""
    return jsonify({"registered_models": [registry_ops.summary_json(m) for m in _list()]})


def _list() -> list[Any]:
    return registry_ops.list_models()


@bp.get("/registry/<name>.json")
@api_login_required
def show(name: str) -> ResponseReturnValue:
    """One registered model's whole record: versions, aliases, rule, follow state, history."""
    return jsonify(registry_ops.record_json(registry_ops.get(name)))


@bp.post("/registry.json")
@api_login_required
def register() -> ResponseReturnValue:
    """Register a model job: ``{name, job_id, rule?}``."""
    body = _body()
    return _answer(registry_ops.register(body.get("name"), body.get("job_id"), body.get("rule")))


@bp.post("/registry/<name>/promote.json")
@api_login_required
def promote(name: str) -> ResponseReturnValue:
    """Move an alias by hand: ``{version, alias?, expected?}``."""
    body = _body()
    if body.get("version") in (None, ""):
        abort(400, description="version is required (the version number to promote)")
    outcome = registry_ops.promote(
        name,
        body.get("version"),
        body.get("alias"),
        body.get("expected"),
        str(body.get("reason") or ""),
    )
    return _answer(outcome)
