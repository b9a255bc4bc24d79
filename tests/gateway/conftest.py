"""Fixtures: the gateway app with a real BusClient on the test's nats-server, and auth helpers."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from digits import events, jobs
from digits.config import Settings
from digits.secrets import SecretBox
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.busclient import BusClient
from gateway.context import accounts_of, bus_of

ADMIN_PASSWORD = "admin-secret-1"
SECRET_KEY = SecretBox.generate_key()
WEBHOOK_TOKEN = "hook-token-123"


def basic(username: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    """A Bearer Authorization header."""
    return {"Authorization": f"Bearer {token}"}


ADMIN = basic("admin", ADMIN_PASSWORD)


def make_app(nats_server: Any, data_dir: Any, **config: Any) -> Flask:
    """A gateway app on the test's nats-server."""
    settings = Settings.from_env(
        {
            "DIGITS_NATS_URL": nats_server.url,
            "DIGITS_DATA_DIR": str(data_dir),
            "DIGITS_SECRET_KEY": SECRET_KEY,
        }
    )
    return create_app({"SETTINGS": settings, "TESTING": True, **config})


@pytest.fixture
def app(nats_server, tmp_path, monkeypatch) -> Iterator[Flask]:
    """The gateway with admin's password and the webhook token from the environment."""
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("DIGITS_S3_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    application = make_app(nats_server, tmp_path / "gateway")
    try:
        yield application
    finally:
        bus_of(application).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the gateway."""
    return app.test_client()


@pytest.fixture
def bus_client(app: Flask) -> BusClient:
    """The app's bus client (its loop runs the test's NATS coroutines too)."""
    return bus_of(app)


@pytest.fixture
def accounts(app: Flask) -> Accounts:
    """The app's user accounts."""
    return accounts_of(app)


def stored(bus_client: BusClient, subject: str, limit: int = 100) -> list[Any]:
    """Every message stored on ``subject`` (streams keep them), oldest first."""

    async def read() -> list[Any]:
        assert bus_client.nc is not None
        js = bus_client.nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True)
        found = []
        try:
            while len(found) < limit:
                found.append(await sub.next_msg(timeout=0.5))
        except TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return found

    return bus_client.call(read(), timeout=30)


def stored_events(bus_client: BusClient, subject: str) -> list[Any]:
    """The decoded events stored on ``subject``."""
    return [events.decode(m.data) for m in stored(bus_client, subject)]


def add_job(bus_client: BusClient, **fields: Any) -> jobs.Job:
    """Store a job record directly, as a service would."""
    fields.setdefault("id", jobs.new_job_id())
    assert bus_client.jobs is not None
    return bus_client.call(bus_client.jobs.create(jobs.Job(**fields)))


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in a page."""
    found = CSRF_INPUT.search(html)
    assert found, "the page has no CSRF token"
    return found.group(1)


class Browser:
    """A logged-in page session on the test client: keeps the CSRF token for posts."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> Any:
        """Log in through the login form; returns the response to the POST."""
        self.csrf = csrf_of(self.client.get("/login").get_data(as_text=True))
        response = self.client.post(
            "/login", data={"username": username, "password": password, "csrf_token": self.csrf}
        )
        return response

    def get(self, url: str, htmx: bool = False, **kw: Any) -> Any:
        """GET a page, or its fragment with ``htmx=True``."""
        headers = {"HX-Request": "true"} if htmx else {}
        return self.client.get(url, headers={**headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, data: dict[str, Any] | None = None, htmx: bool = False, **kw: Any):
        """POST a form with the session's CSRF token."""
        headers = {"HX-Request": "true"} if htmx else {}
        return self.client.post(
            url, data={"csrf_token": self.csrf, **(data or {})}, headers=headers, **kw
        )


@pytest.fixture
def browser(client: FlaskClient) -> Browser:
    """A page session logged in as admin."""
    session = Browser(client)
    response = session.login()
    assert response.status_code == 302, response.get_data(as_text=True)
    return session
