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


@bp.get("/healthz")
def alive() -> ResponseReturnValue:
    """This gateway's own health for probes: 200 while its NATS connection is up, else 503."""
    from gateway.app import bus_of

    client = bus_of(current_app)
    connected = client.nc is not None and client.nc.is_connected
    body = {"status": "ok" if connected else "disconnected", "nats": {"connected": connected}}
    return jsonify(body), 200 if connected else 503
