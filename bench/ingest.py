"""Ingest benchmark: ingest_service shard workers against a bare single-process encode loop.

Run as ``python bench/ingest.py [--images N] [--quick]``. It generates two folders of ten
classes (28x28 grayscale PNGs, and 256x256 colour JPEGs resized to 224x224), times a bare loop
(PIL decode, convert, resize, encode, LMDB put) over each, then starts its own nats-server and
``python -m ingest_service`` processes and times a ``dataset.create`` command from publish to
``dataset.ready`` with 1 and 2 shard workers (and 1 service with 2 encoding processes). It
prints readable lines to stderr and, as the last line on stdout, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import io
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import nats.js.errors
import numpy as np
import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from PIL import Image

from digits import bus, events, jobs, subjects
from digits.dataset import JPEG_QUALITY, ShardWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import (  # noqa: E402
    Service,
    Stack,
    Timer,
    arguments,
    finish,
    machine,
    ratio,
    ratios,
    say,
    start,
)

CLASSES = 10
EXTENSION = "image-classification"
LMDB_BATCH = 256  # puts per write transaction, as ShardWriter does
READY_TIMEOUT_MIN_S = 120.0
CASES = {  # case name -> (services, encoding processes per service)
    "1_worker": (1, 1),
    "2_workers": (2, 1),
    "1_service_2_procs": (1, 2),
}
GOAL_2_WORKERS = 1.6
GOAL_OVERHEAD_PCT = 10.0


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """One image folder and how the dataset is made from it."""

    key: str  # "png28" or "jpg224"
    count: int
    src_size: int  # generated images are src_size x src_size
    size: int  # the dataset's resize_width = resize_height
    channels: int
    encoding: str  # "png" or "jpg"
    suffix: str  # file extension of the generated images

    def form(self, folder: Path) -> dict[str, Any]:
        """The DataIngestion form of a dataset of this set."""
        return {
            "method": "folder",
            "folder_train": str(folder),
            "folder_pct_val": 0,
            "folder_pct_test": 0,
            "resize_width": self.size,
            "resize_height": self.size,
            "resize_channels": self.channels,
            "resize_mode": "squash",
            "encoding": self.encoding,
        }


# A small dataset that starts each case: the services' encoding processes spawn on first use.
WARM = ImageSet("warm", 0, 28, 28, 1, "png", "png")


class CpuMeter:
    """CPU seconds used by this benchmark's process trees, and by the rest of the machine."""

    def __init__(self, pids: list[int], roles: dict[int, tuple[str, str]] | None = None) -> None:
        self.pids = pids
        # pid -> (its role, its descendants' role); a later pid's tree overrides an earlier one's
        self.roles = roles or {}
        self.started = 0.0
        self.busy = 0.0
        self.own: dict[int, tuple[str, float]] = {}

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(
            getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")
        )

    def _own(self) -> dict[int, tuple[str, float]]:
        seconds: dict[int, tuple[str, float]] = {}
        for pid in self.pids:
            role, below = self.roles.get(pid, ("bench", "bench"))
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(pid)
                for proc in (top, *top.children(recursive=True)):
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        seconds[proc.pid] = (role if proc is top else below, t.user + t.system)
        return seconds

    def start(self) -> CpuMeter:
        """Take the starting readings."""
        self.own = self._own()
        self.busy = self._busy()
        self.started = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        """Own and others' CPU seconds since ``start``; others' share of the machine in %."""
        elapsed = time.perf_counter() - self.started
        busy = self._busy() - self.busy
        by_role: dict[str, float] = {}
        for pid, (role, s) in self._own().items():
            by_role[role] = by_role.get(role, 0.0) + s - self.own.get(pid, (role, 0.0))[1]
        own = sum(by_role.values())
        others = max(0.0, busy - own)
        capacity = elapsed * (os.cpu_count() or 1)
        return {
            "own_cpu_s": round(own, 2),
            "by_role_cpu_s": {role: round(s, 2) for role, s in sorted(by_role.items())},
            "others_cpu_s": round(others, 2),
            "others_pct": round(100 * others / capacity, 1) if capacity else 0.0,
            "elapsed_s": round(elapsed, 2),
        }


def warn_busy(what: str, cpu: dict[str, float]) -> None:
    """Say so when other processes used a noticeable share of the machine."""
    if cpu["others_pct"] > 5:
        say(f"  note: other processes used {cpu['others_pct']:.0f}% of the CPUs during {what}")


# --- image folders ---------------------------------------------------------------------------


def _make_class(kind: str, side: int, folder: str, label: int, first: int, count: int) -> None:
    """Write ``count`` side x side images of class ``label`` into ``folder`` (in a pool process)."""
    rng = np.random.default_rng(1000 * label + first)
    out = Path(folder)
    if kind == "png":  # grayscale, brightness by class, with noise
        for i in range(first, first + count):
            base = 20 * label + rng.integers(0, 40, (side, side))
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "L").save(out / f"{i:05d}.png")
        return
    # Colour gradients tinted by class, with noise cut from a larger random tile.
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    tile = rng.normal(0, 12, (2 * side, 2 * side, 3)).astype(np.float32)
    for i in range(first, first + count):
        tint = rng.random(3, dtype=np.float32) * 0.5 + (label / CLASSES) * 0.5
        img = 200 * (ramp[None, :, None] * tint + ramp[:, None, None] * (1 - tint)) / 2 + 40
        y, x = rng.integers(0, side, 2)
        img = img + tile[y : y + side, x : x + side]
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
            out / f"{i:05d}.jpg", quality=JPEG_QUALITY
        )


def make_folder(iset: ImageSet, root: Path) -> Path:
    """The class folders of ``iset`` under ``root`` (reused if complete); its ``train`` dir."""
    base = root / f"{iset.key}-{iset.count}"
    train = base / "train"
    marker = base / ".complete"
    if marker.is_file():
        say(f"{iset.key}: reusing {iset.count} images in {train}")
        return train
    shutil.rmtree(base, ignore_errors=True)
    timer = Timer()
    per_class = [iset.count // CLASSES + (c < iset.count % CLASSES) for c in range(CLASSES)]
    step = 500
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        futures = []
        for label, n in enumerate(per_class):
            folder = train / f"class{label:02d}"
            folder.mkdir(parents=True)
            for first in range(0, n, step):
                futures.append(
                    pool.submit(
                        _make_class,
                        iset.suffix,
                        iset.src_size,
                        str(folder),
                        label,
                        first,
                        min(step, n - first),
                    )
                )
        for future in futures:
            future.result()
    marker.write_text(str(iset.count))
    say(f"{iset.key}: generated {iset.count} images in {timer.seconds:.1f} s")
    return train


def list_images(train: Path) -> list[tuple[str, int]]:
    """``(path, label)`` for every image, classes in sorted order (the bare loop's listing)."""
    entries: list[tuple[str, int]] = []
    classes = sorted(d.name for d in os.scandir(train) if d.is_dir())
    for label, name in enumerate(classes):
        folder = train / name
        files = sorted(e.name for e in os.scandir(folder) if e.is_file())
        entries += [(str(folder / f), label) for f in files]
    return entries


def read_all(train: Path) -> int:
    """Read every file once so that every measurement starts with a warm page cache."""
    return sum(len(Path(p).read_bytes()) for p, _ in list_images(train))


# --- the bare loop ---------------------------------------------------------------------------


def bare_loop(iset: ImageSet, train: Path, out: Path) -> tuple[float, int]:
    """One process: list, decode, convert, resize, encode, LMDB put; (seconds, samples)."""
    mode = "L" if iset.channels == 1 else "RGB"
    size = (iset.size, iset.size)
    save: dict[str, Any] = {"format": "PNG"}
    if iset.encoding == "jpg":
        save = {"format": "JPEG", "quality": JPEG_QUALITY}
    shape = [iset.size, iset.size, iset.channels]
    env = lmdb.open(str(out), subdir=False, map_size=1 << 32, lock=False, meminit=False)
    timer = Timer()
    entries = list_images(train)
    txn = env.begin(write=True)
    for i, (path, label) in enumerate(entries):
        with Image.open(path) as src:
            img = src.convert(mode)
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, **save)
        # The same msgpack fields as digits.dataset.encode_sample, written plainly.
        sample = [shape, "uint8", iset.encoding, buf.getvalue(), label]
        txn.put(b"%08d" % i, msgspec.msgpack.encode(sample), append=True)
        if (i + 1) % LMDB_BATCH == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync(True)
    elapsed = timer.seconds
    written = int(env.stat()["entries"])
    env.close()
    out.unlink()
    return elapsed, written


# --- the framework ---------------------------------------------------------------------------


class Framework:
    """The stack's nats-server and one store; runs the ingest services for each case."""

    def __init__(self, stack: Stack, nc: NATS, roots: list[Path]) -> None:
        self.stack = stack
        self.tmp = stack.root
        self.roots = roots
        self.nc = nc

    def start_services(self, count: int, procs: int, shard_size: int) -> list[Service]:
        """Start ``count`` ingest services with ``procs`` encoding processes each."""
        env = {
            "DIGITS_DATA_ROOTS": os.pathsep.join(str(r) for r in self.roots),
            "DIGITS_STORE_URL": (self.tmp / "store").as_uri(),
            "DIGITS_SECRET_KEY": _secret_key(),
            "DIGITS_SHARD_SIZE": str(shard_size),
            "DIGITS_INGEST_PROCS": str(procs),
            "DIGITS_LOG_LEVEL": "INFO",
        }
        return [self.stack.start_service("ingest_service", **env) for _ in range(count)]

    async def wait_ready(self, services: list[Service], timeout: float = 60.0) -> None:
        """Wait until every service is healthy and pulls on the work and command consumers."""
        deadline = time.monotonic() + timeout
        await self.stack.wait_healthy(services, timeout)
        js = self.nc.jetstream()
        want = len(services)
        pending = [
            subjects.CONSUMERS[subjects.CONSUMER_INGEST],
            subjects.CONSUMERS[subjects.CONSUMER_DATASET_COMMANDS],
        ]
        while pending:
            for svc in services:
                svc.check()
            for spec in list(pending):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    info = await js.consumer_info(spec.stream, spec.durable)
                    if (info.num_waiting or 0) >= want:
                        pending.remove(spec)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(svc.log_tail() for svc in services)
                raise RuntimeError(f"ingest services not ready in {timeout:.0f} s:\n{tails}")
            await asyncio.sleep(0.05)

    async def create(self, name: str, form: dict[str, Any], timeout: float) -> tuple[float, Any]:
        """Publish dataset.create, wait for its dataset.ready; (seconds, the ready event)."""
        job_id = jobs.new_job_id()
        done: asyncio.Future[tuple[float, Any]] = asyncio.get_running_loop().create_future()

        async def on_event(msg: Msg) -> None:
            now = time.perf_counter()
            event = events.decode(msg.data)
            if done.done():
                return
            if isinstance(event, events.DatasetReady):
                done.set_result((now, event))
            elif isinstance(event, events.JobStatusChanged) and event.status == jobs.ERROR:
                done.set_exception(RuntimeError(f"dataset {name} failed: {event.message}"))

        # Subscribed to ready events (and this job's status) before the command is published.
        sub = await self.nc.subscribe(f"{subjects.EVT}.job.*.dataset.ready", cb=on_event)
        status = await self.nc.subscribe(
            subjects.evt_job(job_id, events.JOB_EVENT_NAMES[events.JobStatusChanged]), cb=on_event
        )
        try:
            await self.nc.flush()
            cmd = events.DatasetCreate(name=name, extension=EXTENSION, form=form, job_id=job_id)
            started = time.perf_counter()
            await bus.publish_event(self.nc.jetstream(), cmd)
            finished, ready = await asyncio.wait_for(_for_job(done, job_id), timeout)
        except TimeoutError:
            say(f"  dataset {name} not ready in {timeout:.0f} s: {await self.describe(job_id)}")
            raise
        finally:
            await sub.unsubscribe()
            await status.unsubscribe()
        return finished - started, ready

    def pids(self) -> list[int]:
        """The nats-server's process id, if it runs."""
        proc = getattr(self.stack.server, "proc", None)
        return [proc.pid] if proc is not None else []

    async def describe(self, job_id: str) -> str:
        """A job's status, stages and recorded shards, for an error message."""
        js = self.nc.jetstream()
        try:
            job = await jobs.JobStore(js, await js.key_value(subjects.KV_JOBS)).get(job_id)
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            return f"no job record ({exc!r})"
        stages = ", ".join(f"{s.name}: {s.status} {s.done}/{s.total}" for s in job.stages)
        done = {stage: sorted(map(int, d)) for stage, d in job.extra.get("done", {}).items()}
        return f"status {job.status} {job.error!r}; {stages}; shards done {done}"

    def drop(self, job_id: str) -> None:
        """Remove a dataset's files from the store (they are not needed again)."""
        shutil.rmtree(self.tmp / "store" / "datasets" / job_id, ignore_errors=True)


async def _for_job(done: asyncio.Future[tuple[float, Any]], job_id: str) -> tuple[float, Any]:
    """The ready event of ``job_id`` (another job's ready event is an error here)."""
    finished, ready = await done
    if ready.job_id != job_id:
        raise RuntimeError(f"a dataset.ready for job {ready.job_id} arrived, not {job_id}")
    return finished, ready


def _secret_key() -> str:
    from digits.secrets import SecretBox

    return SecretBox.generate_key()


async def run_case(
    fw: Framework,
    iset: ImageSet,
    train: Path,
    warm: Path,
    case: str,
    shard_size: int,
    timeout: float,
) -> tuple[float, dict[str, float]]:
    """Start the case's services, warm them up, time one dataset; (images/s, CPU use)."""
    count, procs = CASES[case]
    services = fw.start_services(count, procs, shard_size)
    try:
        await fw.wait_ready(services)
        _, warmed = await fw.create(f"warm-{iset.key}-{case}", WARM.form(warm), timeout)
        fw.drop(warmed.job_id)
        await fw.wait_ready(services)
        roles = {pid: ("nats-server", "nats-server") for pid in fw.pids()}
        roles.update({svc.proc.pid: ("services", "encoders") for svc in services})
        meter = CpuMeter([os.getpid(), *roles], roles).start()
        elapsed, ready = await fw.create(f"{iset.key}-{case}", iset.form(train), timeout)
        cpu = meter.stop()
    except BaseException:
        for svc in services:
            say(f"  log of ingest service pid {svc.proc.pid}:\n{svc.log_tail(60)}")
        raise
    finally:
        fw.stack.stop_services()
    fw.drop(ready.job_id)
    written = ready.counts.get("train_db", 0)
    if written != iset.count or any(ready.skipped.values()):
        raise RuntimeError(f"{iset.key} {case}: wrote {ready.counts}, skipped {ready.skipped}")
    return iset.count / elapsed, cpu


# --- profile (in-process) --------------------------------------------------------------------


def profile_set(iset: ImageSet, train: Path, root: Path, limit: int) -> dict[str, Any]:
    """Per-image microseconds of each phase, in this process, on up to ``limit`` images."""
    from digits.extensions.data import get_extension
    from ingest_service.encode import encode_chunk

    form = {**iset.form(train), "data_roots": [str(root)]}
    ext = get_extension(EXTENSION)(is_inference_db=False, **form)
    entries = ext.itemize_entries("train_db")[:limit]
    n = len(entries)
    chunks = [entries[i : i + 64] for i in range(0, n, 64)]
    encode_chunk(EXTENSION, form, chunks[0], iset.encoding, True)  # build the extension

    timer = Timer()
    results = [encode_chunk(EXTENSION, form, c, iset.encoding, True) for c in chunks]
    encode_s = timer.seconds
    # The same without storing unchanged source files as they are (every image re-encoded).
    from digits.extensions.data.imageClassification import data as classification

    as_is, classification.AS_IS = classification.AS_IS, {}
    try:
        timer = Timer()
        for c in chunks:
            encode_chunk(EXTENSION, form, c, iset.encoding, True)
        reencode_s = timer.seconds
    finally:
        classification.AS_IS = as_is
    prof = cProfile.Profile()
    prof.enable()
    for c in chunks:
        encode_chunk(EXTENSION, form, c, iset.encoding, True)
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stderr)
    say(f"{iset.key}: encode_chunk profile over {n} images (top by own time):")
    stats.sort_stats("tottime").print_stats(14)

    import pickle

    timer = Timer()
    for r in results:
        pickle.loads(pickle.dumps(r))  # what crossing the process pool costs (both ends)
    pickle_s = timer.seconds

    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="digits-bench-prof-") as tmp:
        with ShardWriter(Path(tmp, "shard.lmdb")) as writer:
            for r in results:
                for sample in r.samples:
                    writer.put_encoded(sample)
    write_s = timer.seconds

    sub = root / f"profile-{iset.key}"
    sub.mkdir(exist_ok=True)
    for path, label in entries:  # the same images through the bare loop
        (sub / f"class{label:02d}").mkdir(exist_ok=True)
        dest = sub / f"class{label:02d}" / Path(path).name
        if not dest.exists():
            os.link(path, dest)
    bare_s, _ = bare_loop(iset, sub, root / f"profile-{iset.key}.lmdb")
    shutil.rmtree(sub)
    per = {
        "bare_loop": bare_s,
        "encode_chunk": encode_s,
        "encode_chunk_reencoding": reencode_s,
        "pickle_roundtrip": pickle_s,
        "shard_write": write_s,
    }
    return {"images": n, "us_per_image": {k: round(v / n * 1e6, 1) for k, v in per.items()}}


# --- the run ---------------------------------------------------------------------------------


def shard_size_for(count: int) -> int:
    """At least 10 shards (so two workers share them), 128..1000 entries each."""
    return max(128, min(1000, math.ceil(count / 10)))


async def run_framework(
    stack: Stack,
    root: Path,
    sets: list[tuple[ImageSet, Path]],
    cases: list[str],
    repeats: int,
    warm: Path,
    results: dict[str, dict[str, Any]],
    adjacent: bool = False,
) -> None:
    """Every framework case of every set against one nats-server, the stack's.

    ``adjacent``: time the bare loop again just before each case run, and report each case
    against it too (other processes' load on a shared machine changes from minute to minute).
    """
    tmp = stack.root
    stack.start_server()
    async with stack.client("bench-ingest") as nc:
        fw = Framework(stack, nc, [root])
        for iset, train in sets:
            res = results[iset.key]
            base = res["baseline_img_s"]
            timeout = max(READY_TIMEOUT_MIN_S, 20 * iset.count / base)
            rates: dict[str, float] = {}
            for case in cases:
                for _ in range(repeats):
                    if adjacent:
                        elapsed, _ = bare_loop(iset, train, tmp / f"bare-{iset.key}.lmdb")
                        near = iset.count / elapsed
                        res.setdefault("adjacent_ratios", {}).setdefault(case, [])
                    rate, cpu = await run_case(
                        fw, iset, train, warm, case, res["shard_size"], timeout
                    )
                    say(
                        f"{iset.key}: framework {case:17s} {rate:8.1f} img/s  "
                        f"({ratio(rate, base):.2f}x the bare loop)"
                    )
                    if adjacent:
                        res["adjacent_ratios"][case].append(ratio(rate, near))
                        say(f"  bare loop just before: {near:.1f} img/s ({ratio(rate, near):.2f}x)")
                    used = round(cpu["own_cpu_s"] / iset.count * 1e6, 1)
                    spent = res["own_cpu_us_per_img"]
                    spent[case] = min(spent.get(case, used), used)
                    warn_busy(f"{iset.key} {case}", cpu)
                    if rate > rates.get(case, 0.0):
                        rates[case] = round(rate, 1)
                        res["others_cpu_pct"][case] = cpu["others_pct"]
                        res.setdefault("best_run_cpu", {})[case] = role_figures(iset, case, cpu)
            res["framework_img_s"] = rates


def role_figures(iset: ImageSet, case: str, cpu: dict[str, Any]) -> dict[str, Any]:
    """CPU microseconds per image of each role, and how busy the encoding processes were."""
    count, procs = CASES[case]
    per_img = {r: round(s / iset.count * 1e6, 1) for r, s in cpu["by_role_cpu_s"].items()}
    busy = cpu["by_role_cpu_s"].get("encoders", 0.0) / (cpu["elapsed_s"] * count * procs)
    say(f"  CPU us/image by role {per_img}; encoding processes busy {100 * busy:.1f}%")
    return {"us_per_img": per_img, "encoders_busy_pct": round(100 * busy, 1)}


def summarize(key: str, res: dict[str, Any]) -> dict[str, Any]:
    """Ratios, the 1-worker overhead and the goal checks of one set."""
    base = res["baseline_img_s"]
    rates = res["framework_img_s"]
    against = res["ratio_vs_baseline"] = ratios(rates, base)
    met: dict[str, bool] = {}
    line = f"{key}:"
    if "2_workers" in against:
        met["2_workers"] = against["2_workers"] >= GOAL_2_WORKERS
        line += f" 2 workers {against['2_workers']:.2f}x the bare loop (goal {GOAL_2_WORKERS}x)"
    if "1_worker" in rates:
        # Time per image of one worker over the bare loop's, minus one, in percent.
        overhead = round((base / rates["1_worker"] - 1) * 100, 1)
        res["overhead_pct_1_worker"] = overhead
        met["overhead"] = overhead <= GOAL_OVERHEAD_PCT
        line += f" 1-worker overhead {overhead:.1f}% (goal <= {GOAL_OVERHEAD_PCT:.0f}%)"
    res["goal_met"] = met
    say(line)
    order = ("baseline_img_s", "framework_img_s", "ratio_vs_baseline", "overhead_pct_1_worker")
    return {**{k: res[k] for k in order if k in res}, **res}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the folders, run the bare loops and the framework cases; the figures."""
    sets = [
        ImageSet("png28", args.images, 28, 28, 1, "png", "png"),
        ImageSet("jpg224", args.images_224, 256, 224, 3, "jpg", "jpg"),
    ]
    sets = [iset for iset in sets if iset.key in args.sets]
    with Stack("digits-bench-ingest-") as stack:
        tmp = stack.root
        root = Path(args.cache_dir).resolve() if args.cache_dir else tmp / "images"
        root.mkdir(parents=True, exist_ok=True)
        folders = [(iset, make_folder(iset, root)) for iset in sets]
        shard_max = max(shard_size_for(iset.count) for iset in sets)
        warm = make_folder(dataclasses.replace(WARM, count=2 * shard_max), root)
        results: dict[str, dict[str, Any]] = {}
        profile: dict[str, Any] = {}
        for iset, train in folders:
            read_all(train)
            best, others, own = 0.0, 0.0, 0.0
            for _ in range(args.repeats):
                meter = CpuMeter([os.getpid()]).start()
                elapsed, written = bare_loop(iset, train, tmp / f"bare-{iset.key}.lmdb")
                cpu = meter.stop()
                if written != iset.count:
                    raise RuntimeError(f"bare loop wrote {written} of {iset.count} {iset.key}")
                rate = iset.count / elapsed
                say(f"{iset.key}: bare loop {rate:8.1f} img/s ({elapsed:.1f} s)")
                warn_busy(f"{iset.key} bare loop", cpu)
                if rate > best:
                    best, others = rate, cpu["others_pct"]
                    own = round(cpu["own_cpu_s"] / iset.count * 1e6, 1)
            results[iset.key] = {
                "baseline_img_s": round(best, 1),
                "shard_size": shard_size_for(iset.count),
                "others_cpu_pct": {"baseline": others},
                "own_cpu_us_per_img": {"baseline": own},
            }
            if args.profile:
                profile[iset.key] = profile_set(iset, train, root, args.profile)
                say(f"{iset.key}: per-image phases {profile[iset.key]['us_per_image']} us")
        asyncio.run(
            run_framework(
                stack,
                root,
                folders,
                args.cases,
                args.repeats,
                warm,
                results,
                args.adjacent,
            )
        )
    cases = {key: summarize(key, res) for key, res in results.items()}
    out: dict[str, Any] = {
        "bench": "ingest",
        "images": {iset.key: iset.count for iset in sets},
        "cases": cases,
        "goal": {
            "2_workers_vs_baseline_min": GOAL_2_WORKERS,
            "overhead_pct_max": GOAL_OVERHEAD_PCT,
        },
        "repeats": args.repeats,
        "notes": (
            "images/s = images / (publish of dataset.create .. dataset.ready), each case on "
            "freshly started services warmed by a small dataset; 1_worker / 2_workers = 1 / 2 "
            "ingest services with DIGITS_INGEST_PROCS=1, 1_service_2_procs = 1 service with 2; "
            "baseline = one process, no mean image; best of `repeats` runs; others_cpu_pct = "
            "CPU share used by processes outside this benchmark during the measurement; "
            "own_cpu_us_per_img = CPU time of this benchmark's process trees (services, "
            "nats-server) per image, the least of the runs; adjacent_ratios (--adjacent) = "
            "each case run against a bare loop timed just before it; best_run_cpu = the "
            "fastest run's CPU us/image by role (bench, nats-server, services = their main "
            "processes, encoders = their encoding processes) and the encoders' busy share "
            "of its wall time"
        ),
        "machine": machine("pillow", "lmdb", cpu_model=False, nats_server=stack.server_version),
    }
    if profile:
        out["profile"] = profile
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the JSON line."""
    parser = arguments(__doc__, "2000 PNGs and 500 JPEGs")
    parser.add_argument("--images", type=int, default=None, help="28x28 PNGs (default 20000)")
    parser.add_argument(
        "--images-224", type=int, default=None, help="256x256 JPEGs (default 20000)"
    )
    parser.add_argument("--cache-dir", default=None, help="keep and reuse the image folders here")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile the encoding phases in-process on N images of each set",
    )
    parser.add_argument(
        "--sets", default="png28,jpg224", help="comma-separated image sets (png28, jpg224)"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated framework cases")
    parser.add_argument(
        "--adjacent",
        action="store_true",
        help="also time the bare loop just before each case run and report that ratio",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each measurement, the best kept (default 2, --quick 1)",
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.sets = [k for k in args.sets.split(",") if k]
    args.cases = [c for c in args.cases.split(",") if c]
    if not args.sets or set(args.sets) - {"png28", "jpg224"}:
        parser.error("--sets takes png28 and/or jpg224")
    if not args.cases or set(args.cases) - set(CASES):
        parser.error(f"--cases takes some of {', '.join(CASES)}")
    args.images = args.images or (2000 if args.quick else 20000)
    args.images_224 = args.images_224 or (500 if args.quick else 20000)
    if args.images < 2 * CLASSES or args.images_224 < 2 * CLASSES:
        parser.error(f"each set needs at least {2 * CLASSES} images")
    timer = start()
    return finish(run(args), timer)


if __name__ == "__main__":
    sys.exit(main())
