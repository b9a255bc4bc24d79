"""Live-update benchmark: the delay from a TrainProgress event on the bus to the model page.

Run as ``python -m bench.gateway_live [--events N] [--quick]``. It starts its own nats-server,
the gateway app (test client, real BusClient) and a model job record; a poller does what the
model page's script does (GET progress.json?after=<seq> every 0.5 s, at once when "more") while
events are published at random moments, as the trainer would. The delay of an event is the time
from just before its publish to the poll that returns it. Readable lines go to stderr; the last
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
from bench.common import Stack, arguments, emit, say, start, summary  # noqa: E402

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


def run(count: int, seed: int = 1) -> dict[str, Any]:
    """Publish ``count`` events while a page-like poller reads them; the delay figures."""
    os.environ["DIGITS_ADMIN_PASSWORD"] = PASSWORD
    from gateway.app import create_app
    from gateway.context import bus_of

    with Stack("digits-bench-live-") as stack:
        stack.start_server()
        app = create_app({"SETTINGS": Settings.from_env(stack.env()), "TESTING": True})
        client_bus = bus_of(app)
        try:
            job = jobs.Job(id=jobs.new_job_id(), type="model", name="bench", status=jobs.RUNNING)
            client_bus.call(client_bus.jobs.create(job))
            published: dict[int, float] = {}  # step -> time just before publish
            seen: dict[int, float] = {}  # step -> time the page's poll returned it
            fetch_s: list[float] = []  # progress.json answers that carried new points
            stop = threading.Event()

            def poll() -> None:
                client = app.test_client()
                login(client)
                after = 0
                while not stop.is_set():
                    started = time.perf_counter()
                    body = client.get(f"/models/{job.id}/progress.json?after={after}").get_json()
                    now = time.perf_counter()
                    if body["points"]:
                        fetch_s.append(now - started)
                    for p in body["points"]:
                        seen[int(round(p["epoch"] * 1000))] = now
                    after = body["seq"]
                    if not body["more"]:
                        stop.wait(PAGE_POLL_S)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            time.sleep(1.0)  # the poller is logged in and polling
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
            poller.join(5)
        finally:
            client_bus.close()
    delays = [seen[s] - published[s] for s in published if s in seen]
    ms = sorted(1000 * d for d in delays)
    return {
        "bench": "gateway_live",
        "events": count,
        "delivered": len(delays),
        "page_poll_ms": PAGE_POLL_S * 1000,
        **summary(ms, "mean", "p50", "p95", "max", digits=1, key="delay_ms_{}"),
        "progress_json_ms_mean": round(1000 * statistics.mean(fetch_s), 1),
        "delay_over_poll": round(statistics.mean(ms) / (PAGE_POLL_S * 1000), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = arguments(__doc__, "20 events")
    parser.add_argument("--events", type=int, default=60)
    args = parser.parse_args(argv)
    start()
    result = run(20 if args.quick else args.events)
    say(
        f"event -> page: mean {result['delay_ms_mean']} ms, p95 {result['delay_ms_p95']} ms,"
        f" max {result['delay_ms_max']} ms (page polls every {result['page_poll_ms']:g} ms;"
        f" progress.json answers in {result['progress_json_ms_mean']} ms)"
    )
    emit(result)
    return 0 if result["delivered"] == result["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
