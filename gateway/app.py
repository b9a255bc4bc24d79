"""The Flask application factory: the gateway's composition root.

Imports run one way: ``app`` -> the views (``api``, ``classify``, ``models_api``, ``registry_api``,
``health``, ``webhook``, ``plugin_static``, ``pages``) -> their helpers (``model_submit``,
``model_progress``, ``registry_ops``, ``inference``, ``auth``, ``runtime``) -> ``context`` ->
``accounts``, ``busclient``, ``forms``, ``jobcache``. No view imports ``gateway.app``:
``context`` hands them what it built.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from digits.config import Settings
from digits.sns import SnsVerifier
from gateway import (
    api,
    classify,
    context,
    health,
    models_api,
    pages,
    plugin_static,
    registry_api,
    webhook,
)
from gateway.accounts import Accounts, LoginLimiter, SharedLoginLimiter
from gateway.busclient import BusClient

csrf = CSRFProtect()


def _secret_key(settings: Settings) -> bytes:
    """Derived from DIGITS_SECRET_KEY (stable across restarts), else random for this process."""
    if settings.secret_key:
        return hmac.new(
            settings.secret_key.encode(), b"digits-gateway-flask", hashlib.sha256
        ).digest()
    return secrets.token_bytes(32)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway app; ``test_config`` overrides (SETTINGS, BUS, ...) for tests."""
    app = Flask(__name__)
    app.config.from_mapping(
        SETTINGS=None,
        BUS=None,
        START_BUS=True,
        SECRET_KEY=None,
        ADMIN_PASSWORD=os.environ.get("DIGITS_ADMIN_PASSWORD") or None,
        S3_WEBHOOK_TOKEN=os.environ.get("DIGITS_S3_WEBHOOK_TOKEN") or None,
        SNS=None,
        LOGIN_LIMIT=5,
        LOGIN_WINDOW_S=60.0,
        SESSION_COOKIE_SAMESITE="Lax",
        # The largest request (a pretrained archive, 512 MiB by default): refused before parsing.
        MAX_CONTENT_LENGTH=528 << 20,
        PERMANENT_SESSION_LIFETIME=7 * 24 * 3600,
    )
    if test_config:
        app.config.from_mapping(test_config)
    archive_max = app.config.get("PRETRAINED_MAX_BYTES")
    if archive_max and archive_max + (16 << 20) > app.config["MAX_CONTENT_LENGTH"]:
        app.config["MAX_CONTENT_LENGTH"] = archive_max + (16 << 20)
    settings = app.config["SETTINGS"] or Settings.from_env()
    app.config["SETTINGS"] = settings
    if app.config["SNS"] is None:
        app.config["SNS"] = SnsVerifier(settings.sns_origin)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _secret_key(settings)
    bus_client = app.config["BUS"]
    if bus_client is None and app.config["START_BUS"]:
        bus_client = BusClient(settings).start()
    accounts = None
    limits = app.config["LOGIN_LIMIT"], app.config["LOGIN_WINDOW_S"]
    # Without a bus (START_BUS off) the limiter and the pending jobs live in this process only.
    limiter = LoginLimiter(*limits)
    pending_jobs = context.Pending()
    if bus_client is not None:
        accounts = Accounts.open(bus_client)
        accounts.ensure_admin(settings.data_dir, app.config["ADMIN_PASSWORD"])
        # Shared by every gateway replica through their KV buckets.
        limiter = SharedLoginLimiter.open(bus_client, *limits)
        pending_jobs = context.Pending.open(bus_client)
    context.init_app(app, bus_client, accounts, limiter, pending_jobs)
    csrf.init_app(app)
    # The JSON API and the webhook authenticate every request (Basic/Bearer), not by cookie.
    csrf.exempt(api.bp)
    csrf.exempt(models_api.bp)
    csrf.exempt(registry_api.bp)
    csrf.exempt(classify.bp)
    csrf.exempt(webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(models_api.bp)
    app.register_blueprint(registry_api.bp)
    app.register_blueprint(classify.bp)
    app.register_blueprint(webhook.bp)
    app.register_blueprint(plugin_static.bp)
    pages.register(app)
    return app


PAGE_THREADS = 8  # server threads for requests, beside those the event streams hold


def make_server(app: Flask, host: str, port: int) -> Any:
    """The waitress server ``python -m gateway`` runs: threads for pages and event streams.

    A request lookahead of one lets waitress read while a response streams, so it notices a
    client that went away (``waitress.client_disconnected``) and the stream ends at once.
    """
    from waitress.server import create_server

    from gateway.pages.events import SSE_MAX_STREAMS

    streams = int(app.config.get("SSE_MAX_STREAMS", SSE_MAX_STREAMS))
    return create_server(
        app, host=host, port=port, threads=PAGE_THREADS + streams, channel_request_lookahead=1
    )


def stop_server(server: Any, timeout: float = 5.0) -> None:
    """Stop a ``make_server`` server from any thread other than its loop's; its loop then ends.

    Everything the loop watches (the listening socket, the trigger, every open connection, event
    streams included) is closed in the loop's own thread, between two polls: closed from another
    thread, a socket races the loop's ``select`` (EBADF), and closing only the listening socket
    leaves the loop serving the connections still open. The request threads are then let go.
    """
    from waitress import wasyncore

    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    server.task_dispatcher.shutdown(timeout=timeout)
