"""Live pages over server-sent events, served by the gateway's own waitress server.

The stream is fed by the bus: a TrainProgress published on NATS reaches an open event stream;
a client that goes away mid-stream lets go of its listener and its server thread; beyond the
bound a stream is refused with 204 (the page then polls); the polled partials answer 304.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from typing import Any

import pytest

from digits import bus, events, jobs
from digits.natsserver import free_port
from gateway.app import make_server, stop_server
from gateway.context import bus_of
from gateway.pages.events import streams
from tests.gateway.conftest import ADMIN_PASSWORD, add_job, csrf_of, make_app
from tests.waiting import wait_for_sync as wait_until


@pytest.fixture
def served(nats_server, tmp_path, monkeypatch) -> Iterator[tuple[Any, str, str]]:
    """(app, base URL, session cookie): the gateway on waitress, admin logged in."""
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    app = make_app(nats_server, tmp_path / "gateway", SSE_MAX_STREAMS=2, SSE_CHECK_S=0.2)
    port = free_port()
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    token = csrf_of(opener.open(f"{base}/login").read().decode())
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token}
    opener.open(f"{base}/login", urllib.parse.urlencode(form).encode()).read()
    try:
        yield app, base, "; ".join(f"{c.name}={c.value}" for c in jar)
    finally:
        stop_server(server)
        thread.join(timeout=10)
        bus_of(app).close()
    assert not thread.is_alive(), "the server's loop did not end"


def open_stream(base: str, cookie: str, query: str = "") -> http.client.HTTPResponse:
    """GET /events as a browser's EventSource does; the response, its body unread."""
    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(
        "GET", f"/events{query}", headers={"Cookie": cookie, "Accept": "text/event-stream"}
    )
    OPEN.append(conn)
    return conn.getresponse()


OPEN: list[http.client.HTTPConnection] = []  # closed after each test


@pytest.fixture(autouse=True)
def _close_streams() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def next_event(response: http.client.HTTPResponse) -> dict[str, str]:
    """The next event of the stream (its fields), skipping comments."""
    fields: dict[str, str] = {}
    while True:
        line = response.readline().decode().rstrip("\n")
        if not line:
            if "event" in fields:
                return fields
            continue
        if not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def publish_progress(app: Any, job_id: str, epoch: float) -> None:
    """Publish a TrainProgress as the trainer would."""
    client = bus_of(app)
    assert client.nc is not None
    event = events.TrainProgress(job_id=job_id, epoch=epoch, metrics={"loss": 1.0 / epoch})
    client.call(bus.publish_event(client.nc.jetstream(), event))


def test_a_progress_event_on_the_bus_reaches_the_open_stream(served):
    app, base, cookie = served
    job = add_job(bus_of(app), type="model", name="live", status=jobs.RUNNING)
    page = urllib.request.Request(f"{base}/models/{job.id}", headers={"Cookie": cookie})
    with urllib.request.urlopen(page) as answer:
        html = answer.read().decode()
    assert f'sse-connect="/events?job={job.id}"' in html and 'hx-ext="sse"' in html
    assert "htmx-ext-sse-2.2.4.min.js" in html and "sse:job" in html
    response = open_stream(base, cookie, f"?job={job.id}")
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    wait_until(lambda: bus_of(app).live.listeners == 1, timeout=5)
    other = add_job(bus_of(app), type="model", name="other", status=jobs.RUNNING)
    publish_progress(app, other.id, 1.0)  # another job's event is not this stream's
    started = time.perf_counter()
    publish_progress(app, job.id, 2.0)
    event = next_event(response)
    assert event["event"] == "job" and f'"job": "{job.id}"' in event["data"]
    assert '"name": "train.progress"' in event["data"]
    assert time.perf_counter() - started < 2.0
    assert bus_of(app).live.last_progress(job.id).epoch == 2.0


def test_a_client_that_goes_away_mid_stream_costs_nothing(served):
    app, base, cookie = served
    response = open_stream(base, cookie)
    assert response.status == 200
    next_line = response.readline()
    assert next_line.startswith(b"retry:")
    wait_until(lambda: bus_of(app).live.listeners == 1 and streams_open(app) == 1, timeout=5)
    response.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # the tab closes: no goodbye
    response.close()
    wait_until(lambda: bus_of(app).live.listeners == 0 and streams_open(app) == 0, timeout=5)
    for _ in range(2):  # both slots are free again
        assert open_stream(base, cookie).status == 200
    with urllib.request.urlopen(f"{base}/healthz") as answer:
        health = answer.read()
    assert b"status" in health


def test_streams_beyond_the_bound_are_refused_with_204_and_the_page_polls(served):
    app, base, cookie = served
    held = [open_stream(base, cookie) for _ in range(2)]
    assert [r.status for r in held] == [200, 200]
    refused = open_stream(base, cookie)
    assert refused.status == 204  # EventSource does not retry a 204: the partials keep polling
    bad = open_stream(base, cookie, "?job=../../etc")
    assert bad.status == 400 and b"is not a job id" in bad.read()


def streams_open(app: Any) -> int:
    """The app's open event streams."""
    with app.app_context():
        return streams().open


def test_polled_status_partials_answer_304_until_the_job_changes(client, bus_client, browser):
    job = add_job(bus_client, type="dataset", name="etag", status=jobs.DONE)
    url = f"/datasets/{job.id}/status"
    first = browser.get(url, htmx=True)
    tag = first.headers["ETag"]
    assert first.status_code == 200 and re.fullmatch(r'"[0-9a-f]+"', tag)
    assert first.headers["Cache-Control"] == "private, no-cache"
    same = browser.get(url, htmx=True, headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.data == b""
    bus_client.call(bus_client.jobs.edit(job.id, notes="changed"))
    changed = browser.get(url, htmx=True, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["ETag"] != tag
    for malformed in ('"unterminated', "garbage, , W/", '""""', "\x7f" * 300):
        answer = browser.get(url, htmx=True, headers={"If-None-Match": malformed})
        assert answer.status_code == 200 and b"dataset-status" in answer.data, malformed
    assert browser.get(url, htmx=True, headers={"If-None-Match": "*"}).status_code == 304


def test_a_model_status_partial_changes_its_etag_with_progress(app, client, bus_client, browser):
    job = add_job(bus_client, type="model", name="m", status=jobs.RUNNING)
    url = f"/models/{job.id}/status"
    tag = browser.get(url, htmx=True).headers["ETag"]
    assert browser.get(url, htmx=True, headers={"If-None-Match": tag}).status_code == 304
    publish_progress(app, job.id, 1.0)
    wait_until(lambda: bus_client.live.last_progress(job.id) is not None, timeout=5)
    moved = browser.get(url, htmx=True, headers={"If-None-Match": tag})
    assert moved.status_code == 200 and b"epoch 1 of" in moved.data
