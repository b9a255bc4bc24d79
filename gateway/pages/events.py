"""Server-sent events for the live pages: a notice each time a job's events arrive on the bus.

A page opens ``/events?job=<id>`` (one job) or ``/events`` (every job, for the home page's
running panel) through htmx's SSE extension; each notice makes the page's partials ask again
(``hx-trigger="sse:job"``), and they answer 304 when nothing they show changed. Notices that
arrive together go out as one. A stream holds a server thread, so there are at most
``SSE_MAX_STREAMS`` at once (more get 204, which tells the browser not to retry: the page
polls instead), each lasts ``SSE_LIFETIME_S`` (the browser reconnects), and one whose client
went away ends within ``SSE_CHECK_S`` and lets go of its listener.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from gateway.auth import page_login_required
from gateway.context import bus_client
from gateway.live import EVERY, Listener, Notice

bp = Blueprint("events", __name__)

SSE_MAX_STREAMS = 24  # open event streams per gateway (each holds a server thread)
SSE_LIFETIME_S = 300.0  # then the stream ends and the browser opens a new one
SSE_CHECK_S = 1.0  # how often a quiet stream checks that its client is still there
SSE_KEEPALIVE_S = 15.0  # a comment line this often, so proxies keep the connection
RETRY_MS = 1000  # how soon the browser reconnects after a stream ends
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _setting(name: str, default: float) -> float:
    return float(current_app.config.get(name, default))


class _Streams:
    """How many streams this app has open, against its bound."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.open -= 1


def streams() -> _Streams:
    """This app's open event streams."""
    held = current_app.extensions
    if "digits.sse" not in held:
        held.setdefault("digits.sse", _Streams(int(_setting("SSE_MAX_STREAMS", SSE_MAX_STREAMS))))
    return held["digits.sse"]


@bp.get("/events")
@page_login_required
def events() -> ResponseReturnValue:
    """An event stream of notices for ``?job=`` (or every job): ``event: job``, JSON data."""
    job_id = request.args.get("job", "").strip() or EVERY
    if job_id != EVERY and not JOB_ID.match(job_id):
        return Response(f"job {job_id!r} is not a job id", status=400, mimetype="text/plain")
    bound = streams()
    if not bound.take():
        return Response(status=204)  # too many streams: the page keeps polling
    stream = _Stream(bus_client().live.listen(job_id), bound)
    stream.gone = request.environ.get("waitress.client_disconnected") or stream.gone
    stream.lifetime = _setting("SSE_LIFETIME_S", SSE_LIFETIME_S)
    stream.check = _setting("SSE_CHECK_S", SSE_CHECK_S)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream, mimetype="text/event-stream", headers=headers)


class _Stream:
    """The stream's lines until its lifetime ends or its client goes; then it lets go.

    Letting go happens once, whether the lines ran out or the server closed the response
    before reading any (``close``), so a stream never leaks its listener or its slot.
    """

    def __init__(self, listener: Listener, bound: _Streams) -> None:
        self.listener, self.bound = listener, bound
        self.lifetime, self.check = SSE_LIFETIME_S, SSE_CHECK_S
        self.gone: Callable[[], bool] = lambda: False
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._lines()
        finally:
            self.close()

    def _lines(self) -> Iterator[str]:
        yield f"retry: {RETRY_MS}\n: listening to {self.listener.job_id}\n\n"
        now = time.monotonic()
        deadline, quiet_since = now + self.lifetime, now
        while (now := time.monotonic()) < deadline and not self.gone():
            notice = self.listener.next(timeout=min(self.check, deadline - now))
            if notice is None:
                if now - quiet_since >= SSE_KEEPALIVE_S:
                    quiet_since = now
                    yield ": keep-alive\n\n"
                continue
            notices = [notice, *_drain(self.listener)]
            quiet_since = time.monotonic()
            yield "".join(_event(n) for n in _latest(notices))

    def close(self) -> None:
        """Stop listening and free the slot (again is harmless)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.listener.close()
        self.bound.give()


def _drain(listener: Listener) -> list[Notice]:
    found = []
    while (more := listener.next(timeout=0)) is not None:
        found.append(more)
    return found


def _latest(notices: list[Notice]) -> list[Notice]:
    """One notice per job, its newest."""
    return list({n.job_id: n for n in notices}.values())


def _event(notice: Notice) -> str:
    data = {"job": notice.job_id, "name": notice.name, "version": notice.version}
    return f"event: job\ndata: {json.dumps(data)}\n\n"
