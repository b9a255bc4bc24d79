"""Health of the stack as the gateway sees it."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from gateway.context import bus_client

bp = Blueprint("health", __name__)


@bp.get("/healthz.json")
def healthz() -> ResponseReturnValue:
    """NATS state and every service heard from (200 when all are alive, else 503)."""
    report = bus_client().health()
    return jsonify(report), 200 if report["status"] == "ok" else 503


@bp.get("/healthz")
def alive() -> ResponseReturnValue:
    """This gateway's own health for probes: 200 while its NATS connection is up, else 503."""
    client = bus_client()
    connected = client.nc is not None and client.nc.is_connected
    body = {"status": "ok" if connected else "disconnected", "nats": {"connected": connected}}
    return jsonify(body), 200 if connected else 503
