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
import tracemalloc
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import msgspec

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


STAGES = ("Parse Folder (train/val)", "Create DB (train)", "Create DB (val)")


def populate(bus_client: Any, count: int, first: int = 0, running: bool = True) -> str:
    """Store ``count`` jobs: datasets in groups (a tenth running, if ``running``) and models.

    Records go straight into the bucket (500 at a time), as the services leave them; the id of
    a running dataset is returned. Jobs numbered from ``first`` are older than those before.
    """
    records, running_id, datasets = [], "", []
    for n in range(first, first + count):
        is_model = n % 5 == 4 and datasets
        status = jobs.RUNNING if running and n % 10 == 0 else jobs.DONE
        progress = 0.5 if status == jobs.RUNNING else 1.0
        job = jobs.Job(
            id=f"20260101-{n:06d}-beef",
            type="model" if is_model else "dataset",
            name=f"{'model' if is_model else 'dataset'}-{n}",
            group=f"group-{n % 4}" if n % 3 else "",
            owner="admin",
            status=status,
            depends_on=[datasets[-1]] if is_model else [],
            form={"train_epochs": 10} if is_model else {"method": "folder", "folder_train": "/d"},
            extra={"labels": ["a", "b"]},
            created_at=1_800_000_000 - n,
            history=[jobs.StatusEntry(status=status, at=1_800_000_000 - n)],
            stages=[]
            if is_model
            else [jobs.Stage(name=s, status=status, progress=progress) for s in STAGES],
        )
        records.append(job)
        if not is_model:
            datasets.append(job.id)
            running_id = running_id or (job.id if status == jobs.RUNNING else "")
    kv = bus_client.jobs.kv

    async def put_all() -> None:
        for lo in range(0, len(records), 500):
            chunk = records[lo : lo + 500]
            await asyncio.gather(*(kv.put(j.id, msgspec.msgpack.encode(j)) for j in chunk))

    bus_client.call(put_all(), timeout=300)
    return running_id


def cache_memory(bus_client: Any) -> dict[str, Any]:
    """What a job cache built now holds, and the memory it allocated to hold it (tracemalloc)."""
    from gateway.jobcache import JobCache

    async def build() -> JobCache:
        cache = await JobCache(bus_client.jobs.kv).start()
        await asyncio.wait_for(cache.synced.wait(), 120)
        return cache

    tracemalloc.start()
    try:
        cache = bus_client.call(build(), timeout=130)
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    held = {"jobs": len(cache.summaries), "full_records": cache.held_records}
    bus_client.call(cache.stop())
    per_job = allocated / max(held["jobs"], 1)
    return {**held, "bytes": allocated, "bytes_per_job": round(per_job)}


def login(base: str) -> str:
    """Log in through the form; the session cookie header to send."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = gateway_live.login_form(opener.open(f"{base}/login").read().decode())
    opener.open(f"{base}/login", urllib.parse.urlencode(form).encode()).read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


async def _drive(
    url: str, headers: dict[str, str], clients: int, seconds: float, conditional: bool = False
) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = not_modified = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, not_modified
        tag = ""  # as a browser's cache does: send back the ETag of the copy it holds
        while time.perf_counter() < deadline:
            timer = Timer()
            sent = {**headers, "If-None-Match": tag} if conditional and tag else headers
            async with session.get(url, headers=sent, allow_redirects=False) as r:
                await r.read()
                if r.status == 304:
                    not_modified += 1
                elif r.status != 200:
                    errors += 1
                tag = r.headers.get("ETag", tag)
            latencies.append(timer.ms)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return {
        "latencies": latencies,
        "errors": errors,
        "not_modified": not_modified,
        "seconds": seconds,
    }


def _load(
    url: str, headers: dict[str, str], clients: int, seconds: float, conditional: bool, out: Any
) -> None:
    """The load process: ``clients`` concurrent keep-alive clients for ``seconds``."""
    asyncio.run(_drive(url, headers, 5, 0.5, conditional))  # warm-up
    out.put(asyncio.run(_drive(url, headers, clients, seconds, conditional)))


def measure(
    url: str, headers: dict[str, str], clients: int, seconds: float, conditional: bool = False
) -> dict[str, Any]:
    """Requests per second and latency percentiles of GET ``url``."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (url, headers, clients, seconds, conditional, queue)
    proc = ctx.Process(target=_load, args=args)
    proc.start()
    found = queue.get(timeout=seconds + 120)
    proc.join(30)
    ms = sorted(found["latencies"])
    return {
        "requests": len(ms),
        "errors": found["errors"],
        **({"not_modified": found["not_modified"]} if conditional else {}),
        "rps": round(len(ms) / found["seconds"], 1),
        **summary(ms, "p50", "p99", digits=1, key="{}_ms"),
    }


def _routes(base: str, cookie: dict[str, str], running: str) -> dict[str, dict[str, Any]]:
    htmx = {**cookie, "HX-Request": "true"}
    return {
        "baseline_healthz": {"url": f"{base}/healthz", "headers": {}},
        "home_page": {"url": f"{base}/", "headers": cookie},
        "status_partial": {"url": f"{base}/datasets/{running}/status", "headers": htmx},
        "status_partial_conditional": {
            "url": f"{base}/datasets/{running}/status",
            "headers": htmx,
            "conditional": True,
        },
    }


def _round(base: str, routes: dict[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    found = {}
    for name, route in routes.items():
        found[name] = measure(
            route["url"], route["headers"], clients, seconds, route.get("conditional", False)
        )
        say(f"{name:28s} {found[name]}")
    base_rps = found["baseline_healthz"]["rps"] or 1.0
    for name in routes:
        if name != "baseline_healthz":
            found[name]["rps_vs_baseline"] = ratio(found[name]["rps"], base_rps)
    return found


TICK_S = 2.0  # how often the running dataset reports progress during the measurements


def _tick(bus_client: Any, job_id: str, stop: threading.Event) -> None:
    step = 0
    while not stop.wait(TICK_S):
        step += 1
        progress = 0.5 + (step % 50) / 100
        bus_client.call(bus_client.jobs.update_stage(job_id, STAGES[1], progress=progress))


def run(clients: int, count: int, many: int, seconds: float) -> dict[str, Any]:
    """Measure the baseline and the pages with ``count`` jobs, then with ``many`` jobs."""
    from gateway.app import create_app, make_server, stop_server
    from gateway.context import bus_of

    result: dict[str, Any] = {}
    with Stack("digits-bench-gw-") as stack:
        stack.start_server()
        settings = Settings.from_env(stack.env())
        app = create_app({"SETTINGS": settings, "ADMIN_PASSWORD": PASSWORD})
        bus_client = bus_of(app)
        running = populate(bus_client, count)
        port = free_port()
        http = make_server(app, "127.0.0.1", port)
        thread = threading.Thread(target=http.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        cookie = {"Cookie": login(base)}
        # The running dataset's stage moves every 2 s (as ingest reports), so some polls change.
        ticking = threading.Event()
        ticker = threading.Thread(target=_tick, args=(bus_client, running, ticking), daemon=True)
        ticker.start()
        routes = _routes(base, cookie, running)
        say(f"--- {count} jobs")
        result[f"jobs_{count}"] = _round(base, routes, clients, seconds)
        if many > count:
            timer = Timer()
            populate(bus_client, many - count, first=count, running=False)
            assert len(bus_client.list_jobs()) == many
            say(f"--- {many} jobs ({many - count} more stored in {timer.seconds:.1f} s)")
            result[f"jobs_{many}"] = _round(base, routes, clients, seconds)
            result["job_cache_memory"] = cache_memory(bus_client)
            say(f"job cache at {many} jobs: {result['job_cache_memory']}")
        ticking.set()
        ticker.join(10)
        stop_server(http)
        thread.join(10)
        bus_client.close()
    if many > count:
        small, large = result[f"jobs_{count}"], result[f"jobs_{many}"]
        result["home_page_ratio_at_many_over_few"] = ratio(
            large["home_page"]["rps_vs_baseline"], small["home_page"]["rps_vs_baseline"]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the JSON line."""
    parser = arguments(__doc__, "2 s per route")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--jobs", type=int, default=100, help="job records in the store")
    parser.add_argument(
        "--many", type=int, default=10_000, help="then this many job records (0: skip)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per route")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    if args.clients < 1 or args.jobs < 10 or seconds <= 0:
        parser.error("--clients must be at least 1, --jobs at least 10, --seconds positive")
    timer = start()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # 50 clients queue by design
    figures = run(args.clients, args.jobs, args.many, seconds)
    figures["progress_to_page"] = gateway_live.run(20 if args.quick else 60)
    result = {
        "bench": "gateway",
        "clients": args.clients,
        "jobs": args.jobs,
        "seconds_per_route": seconds,
        "server": "waitress (gateway.app.make_server)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **figures,
    }
    return finish(result, timer)


if __name__ == "__main__":
    sys.exit(main())
