"""Live-update benchmark: the delay from a TrainProgress event on the bus to the model page.

Run as ``python -m bench.gateway_live [--events N] [--quick]``. It starts its own nats-server,
the gateway app (test client, real BusClient) and a model job record; a poller does what the
model page's script does (GET progress.json?after=<seq> every 0.5 s, at once when "more") while
events are published at random moments, as the trainer would. The delay of an event is the time
from just before its publish to the poll that returns it. Readable lines go to stderr; the last
stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from digits import bus, events, jobs
from digits.config import Settings
from digits.natsserver import NatsServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import say  # noqa: E402

PAGE_POLL_S = 0.5  # the model page's graph poll (gateway/templates/models/show.html)
PASSWORD = "bench-password-1"


def login(client: Any) -> None:
    """Log the test client in as admin through the login form."""
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    form = {"username": "admin", "password": PASSWORD, "csrf_token": token}
    assert client.post("/login", data=form).status_code == 302


def run(count: int, seed: int = 1) -> dict[str, Any]:
    """Publish ``count`` events while a page-like poller reads them; the delay figures."""
    os.environ["DIGITS_ADMIN_PASSWORD"] = PASSWORD
    from gateway.app import bus_of, create_app

    with tempfile.TemporaryDirectory(prefix="digits-bench-live-") as tmp:
        server = NatsServer(Path(tmp, "js")).start()
        settings = Settings.from_env(
            {"DIGITS_NATS_URL": server.url, "DIGITS_DATA_DIR": str(Path(tmp, "gw"))}
        )
        app = create_app({"SETTINGS": settings, "TESTING": True})
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
            server.stop()
    delays = [seen[s] - published[s] for s in published if s in seen]
    ms = sorted(1000 * d for d in delays)
    return {
        "bench": "gateway_live",
        "events": count,
        "delivered": len(delays),
        "page_poll_ms": PAGE_POLL_S * 1000,
        "delay_ms_mean": round(statistics.mean(ms), 1),
        "delay_ms_p50": round(statistics.median(ms), 1),
        "delay_ms_p95": round(statistics.quantiles(ms, n=100, method="inclusive")[94], 1),
        "delay_ms_max": round(ms[-1], 1),
        "progress_json_ms_mean": round(1000 * statistics.mean(fetch_s), 1),
        "delay_over_poll": round(statistics.mean(ms) / (PAGE_POLL_S * 1000), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="20 events")
    args = parser.parse_args(argv)
    result = run(20 if args.quick else args.events)
    say(
        f"event -> page: mean {result['delay_ms_mean']} ms, p95 {result['delay_ms_p95']} ms,"
        f" max {result['delay_ms_max']} ms (page polls every {result['page_poll_ms']:g} ms;"
        f" progress.json answers in {result['progress_json_ms_mean']} ms)"
    )
    print(json.dumps(result), flush=True)
    return 0 if result["delivered"] == result["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
