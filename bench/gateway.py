"""Gateway benchmark: the home page and a job-status partial against a trivial route, side by side.

Run as ``python bench/gateway.py [--clients 50] [--jobs 100] [--seconds 5] [--quick]``. It starts
its own nats-server, stores ``--jobs`` job records, serves the gateway with waitress in a thread
(as ``python -m gateway`` does) and drives it from a separate load process with ``--clients``
concurrent keep-alive clients (aiohttp), so the load generator does not share the server's GIL.
The baseline is ``/healthz`` on the same server: the ratio shows what a page itself costs. Then
it measures the delay from a training progress event on the bus to the model page's graph poll
(``bench/gateway_live.py``, which also runs by itself).
Readable lines go to stderr; the last line on stdout is one JSON object with the figures.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import platform
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and "gateway" would be this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import gateway_live  # noqa: E402
from bench.common import Stack, Timer, arguments, finish, ratio, say, start, summary  # noqa: E402
from digits import jobs  # noqa: E402
from digits.config import Settings  # noqa: E402
from digits.natsserver import free_port  # noqa: E402

PASSWORD = gateway_live.PASSWORD
Targets = list[tuple[str, str, dict[str, str]]]


def populate(bus_client: Any, count: int) -> str:
    """Store ``count`` jobs: datasets in groups (a tenth running) and models; a running dataset."""
    store = bus_client.jobs
    running_id = ""
    datasets: list[str] = []
    for i in range(count):
        is_model = i % 5 == 4 and datasets
        status = jobs.RUNNING if i % 10 == 0 else jobs.DONE
        job = jobs.Job(
            id=f"20260101-{i:06d}-beef",
            type="model" if is_model else "dataset",
            name=f"{'model' if is_model else 'dataset'}-{i}",
            group=f"group-{i % 4}" if i % 3 else "",
            owner="admin",
            status=status,
            depends_on=[datasets[-1]] if is_model else [],
            form={"train_epochs": 10} if is_model else {"method": "folder", "folder_train": "/d"},
            extra={"labels": ["a", "b"]},
        )
        bus_client.call(store.create(job))
        if not is_model:
            datasets.append(job.id)
            for stage in ("Parse Folder (train/val)", "Create DB (train)", "Create DB (val)"):
                change = {"status": status, "progress": 0.5 if status == jobs.RUNNING else 1.0}
                bus_client.call(store.update_stage(job.id, stage, **change))
            running_id = running_id or (job.id if status == jobs.RUNNING else "")
    return running_id


def login(base: str) -> str:
    """Log in through the form; the session cookie header to send."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = gateway_live.login_form(opener.open(f"{base}/login").read().decode())
    opener.open(f"{base}/login", urllib.parse.urlencode(form).encode()).read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


async def _drive(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            timer = Timer()
            async with session.get(url, headers=headers, allow_redirects=False) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(timer.ms)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return {"latencies": latencies, "errors": errors, "seconds": seconds}


def _load(url: str, headers: dict[str, str], clients: int, seconds: float, out: Any) -> None:
    """The load process: ``clients`` concurrent keep-alive clients for ``seconds``."""
    asyncio.run(_drive(url, headers, 5, 0.5))  # warm-up
    out.put(asyncio.run(_drive(url, headers, clients, seconds)))


def measure(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    """Requests per second and latency percentiles of GET ``url``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(url, headers, clients, seconds, queue))
    proc.start()
    found = queue.get(timeout=seconds + 120)
    proc.join(30)
    ms = sorted(found["latencies"])
    return {
        "requests": len(ms),
        "errors": found["errors"],
        "rps": round(len(ms) / found["seconds"], 1),
        **summary(ms, "p50", "p99", digits=1, key="{}_ms"),
    }


def run(clients: int, count: int, seconds: float) -> dict[str, Any]:
    """Start everything, measure the baseline and the two pages, stop everything."""
    from waitress.server import create_server

    from gateway.app import create_app
    from gateway.context import bus_of

    with Stack("digits-bench-gw-") as stack:
        stack.start_server()
        settings = Settings.from_env(stack.env())
        app = create_app({"SETTINGS": settings, "ADMIN_PASSWORD": PASSWORD})
        bus_client = bus_of(app)
        running = populate(bus_client, count)
        port = free_port()
        http = create_server(app, host="127.0.0.1", port=port, threads=8)
        thread = threading.Thread(target=http.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        cookie = {"Cookie": login(base)}
        targets: Targets = [
            ("baseline_healthz", "/healthz", {}),
            ("home_page", "/", cookie),
            ("status_partial", f"/datasets/{running}/status", {**cookie, "HX-Request": "true"}),
        ]
        result: dict[str, Any] = {}
        for name, path, headers in targets:
            result[name] = measure(base + path, headers, clients, seconds)
            say(f"{name:18s} {result[name]}")
        http.close()
        bus_client.close()
    base_rps = result["baseline_healthz"]["rps"] or 1.0
    for name in ("home_page", "status_partial"):
        result[name]["rps_vs_baseline"] = ratio(result[name]["rps"], base_rps)
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the JSON line."""
    parser = arguments(__doc__, "2 s per route")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--jobs", type=int, default=100, help="job records in the store")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per route")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    if args.clients < 1 or args.jobs < 10 or seconds <= 0:
        parser.error("--clients must be at least 1, --jobs at least 10, --seconds positive")
    timer = start()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # 50 clients queue by design
    figures = run(args.clients, args.jobs, seconds)
    figures["progress_to_page"] = gateway_live.run(20 if args.quick else 60)
    result = {
        "bench": "gateway",
        "clients": args.clients,
        "jobs": args.jobs,
        "seconds_per_route": seconds,
        "server": "waitress, 8 threads",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **figures,
    }
    return finish(result, timer)


if __name__ == "__main__":
    sys.exit(main())
