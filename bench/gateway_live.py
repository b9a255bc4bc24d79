"""Live-update benchmark: the delay from a TrainProgress event on the bus to the model page.

Run as ``python -m bench.gateway_live [--events N] [--quick]``. It starts its own nats-server,
the gateway app (test client, real BusClient) and a model job record, and measures the model
page's two ways of hearing of progress side by side: with its event stream open (``/events``,
fed by the bus: each notice makes it GET progress.json?after=<seq> at once) and, the baseline,
polling as it does without one (every 0.5 s, at once when "more"). Events are published at
random moments, as the trainer would. The delay of an event is the time from just before its
publish to the fetch that returns it. Readable lines go to stderr; the last
stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from digits import bus, events, jobs
from digits.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import Stack, arguments, emit, ratio, say, start, summary  # noqa: E402

PAGE_POLL_S = 0.5  # the model page's graph poll (gateway/templates/models/show.html)
PASSWORD = "bench-password-1"


def login_form(html: str) -> dict[str, str]:
    """The admin's login form, with the CSRF token of the login page ``html``."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token, "no CSRF token on the login page"
    return {"username": "admin", "password": PASSWORD, "csrf_token": token.group(1)}


def login(client: Any) -> None:
    """Log the test client in as admin through the login form."""
    form = login_form(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data=form).status_code == 302


def _poller(client: Any, job_id: str, seen: dict[int, float], fetch_s: list[float]) -> Any:
    """What the model page's graph script does on each turn: GET progress.json?after=seq."""
    state = {"after": 0}

    def fetch() -> bool:
        started = time.perf_counter()
        body = client.get(f"/models/{job_id}/progress.json?after={state['after']}").get_json()
        now = time.perf_counter()
        if body["points"]:
            fetch_s.append(now - started)
        for p in body["points"]:
            seen[int(round(p["epoch"] * 1000))] = now
        state["after"] = body["seq"]
        return bool(body["more"])

    return fetch


def _poll_loop(fetch: Any, stop: threading.Event, client: Any, job_id: str) -> None:
    """Without an event stream: ask every PAGE_POLL_S (at once while there is more)."""
    while not stop.is_set():
        if not fetch():
            stop.wait(PAGE_POLL_S)


def _sse_loop(fetch: Any, stop: threading.Event, client: Any, job_id: str) -> None:
    """With the page's event stream open: ask at each notice (as show.html's script does)."""
    stream = client.get(f"/events?job={job_id}", buffered=False)
    assert stream.status_code == 200, stream.status_code
    for chunk in stream.response:
        if stop.is_set():
            break
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        if "event: job" in text:
            while fetch():
                pass


def _measure(app: Any, mode: str, count: int, seed: int) -> dict[str, Any]:
    client_bus = bus_of_app(app)
    job = jobs.Job(id=jobs.new_job_id(), type="model", name=f"bench-{mode}", status=jobs.RUNNING)
    client_bus.call(client_bus.jobs.create(job))
    published: dict[int, float] = {}  # step -> time just before publish
    seen: dict[int, float] = {}  # step -> time the page's fetch returned it
    fetch_s: list[float] = []  # progress.json answers that carried new points
    stop = threading.Event()
    client = app.test_client()
    login(client)
    loop = _sse_loop if mode == "sse" else _poll_loop
    reader = threading.Thread(
        target=loop, args=(_poller(client, job.id, seen, fetch_s), stop, client, job.id)
    )
    reader.daemon = True
    reader.start()
    time.sleep(1.0)  # the reader is logged in and listening
    rng = random.Random(seed)
    js = client_bus.nc.jetstream()
    for step in range(1, count + 1):
        time.sleep(rng.uniform(0.05, 0.6))  # events land at any moment of the poll cycle
        event = events.TrainProgress(
            job_id=job.id, epoch=step / 1000, step=step, metrics={"loss": 1.0 / step}
        )
        published[step] = time.perf_counter()
        client_bus.call(bus.publish_event(js, event))
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join(2 * PAGE_POLL_S)  # an event stream's reader may be waiting: it is a daemon
    ms = sorted(1000 * (seen[s] - published[s]) for s in published if s in seen)
    return {
        "events": count,
        "delivered": len(ms),
        **summary(ms, "mean", "p50", "p95", "max", digits=1, key="delay_ms_{}"),
        "progress_json_ms_mean": round(1000 * statistics.mean(fetch_s), 1) if fetch_s else None,
    }


def bus_of_app(app: Any) -> Any:
    """The app's bus client."""
    from gateway.context import bus_of

    return bus_of(app)


def run(count: int, seed: int = 1) -> dict[str, Any]:
    """Publish ``count`` events to a page that polls, then to one with its event stream open."""
    os.environ["DIGITS_ADMIN_PASSWORD"] = PASSWORD
    from gateway.app import create_app

    with Stack("digits-bench-live-") as stack:
        stack.start_server()
        app = create_app({"SETTINGS": Settings.from_env(stack.env()), "TESTING": True})
        try:
            polled = _measure(app, "poll", count, seed)
            pushed = _measure(app, "sse", count, seed)
        finally:
            bus_of_app(app).close()
    return {
        "bench": "gateway_live",
        "page_poll_ms": PAGE_POLL_S * 1000,
        "sse": pushed,
        "baseline_polling": polled,
        "sse_p95_over_polling_p95": ratio(pushed["delay_ms_p95"], polled["delay_ms_p95"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = arguments(__doc__, "20 events")
    parser.add_argument("--events", type=int, default=60)
    args = parser.parse_args(argv)
    start()
    result = run(20 if args.quick else args.events)
    for mode in ("sse", "baseline_polling"):
        r = result[mode]
        say(
            f"{mode:17s} event -> page: mean {r['delay_ms_mean']} ms, p95 {r['delay_ms_p95']} ms,"
            f" max {r['delay_ms_max']} ms ({r['delivered']} of {r['events']} delivered)"
        )
    emit(result)
    delivered = all(
        result[m]["delivered"] == result[m]["events"] for m in ("sse", "baseline_polling")
    )
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
