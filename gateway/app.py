"""The Flask application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from digits.config import Settings
from gateway import health
from gateway.busclient import BusClient


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway app; ``test_config`` overrides (SETTINGS, BUS, ...) for tests."""
    app = Flask(__name__)
    app.config.from_mapping(SETTINGS=None, BUS=None, START_BUS=True)
    if test_config:
        app.config.from_mapping(test_config)
    settings = app.config["SETTINGS"] or Settings.from_env()
    app.config["SETTINGS"] = settings
    bus_client = app.config["BUS"]
    if bus_client is None and app.config["START_BUS"]:
        bus_client = BusClient(settings).start()
    app.extensions["digits_bus"] = bus_client
    app.register_blueprint(health.bp)
    return app


def bus_of(app: Flask) -> BusClient:
    """The app's bus client."""
    client = app.extensions.get("digits_bus")
    if client is None:
        raise RuntimeError("the gateway has no bus client (START_BUS was off)")
    return client
