"""Health of the stack as the gateway sees it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)


@bp.get("/healthz.json")
def healthz() -> ResponseReturnValue:
    """NATS state and every service heard from (200 when all are alive, else 503)."""
    from gateway.app import bus_of

    report = bus_of(current_app).health()
    return jsonify(report), 200 if report["status"] == "ok" else 503
