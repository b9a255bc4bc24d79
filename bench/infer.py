"""Inference benchmark: the view service over NATS against the same Keras model called in-process.

Run as ``python bench/infer.py [--quick]``. It starts a nats-server with JetStream, writes a file
store the way the train service leaves it (a 10-class dataset's manifest, mean image and a shard;
a LeNet on 28x28x1 trained for a few steps, saved as ``models/<job>/snapshots/epoch-1.keras``
with ``info.json``), records the dataset and model jobs in the KV bucket, writes PNG files under
a data root and starts one ``python -m view_service``. After a warm-up (the first request loads
the model) it measures, side by side with the model loaded in this process through the service's
own ``ModelCache`` (so preprocessing is identical):

* single-image latency: sequential ``digits.v1.rpc.infer.classify`` requests against
  ``LoadedModel.preprocess`` + ``predict`` per image (p50, p99, mean ms; overhead and ratio);
* concurrent throughput: 16, then 64, asyncio requesters against ``predict_on_batch`` in batches
  of 32 (a busy reply is counted and asked again);
* batch throughput: ``digits.v1.rpc.infer.many`` over a folder against an in-process loop
  over the same files in batches of 64 (read, preprocess, predict, top-k);

and a breakdown of where a single request's time goes (KV lookup, the handler in-process with
the service's micro-batcher, the same without its delay, the service's own handler histogram).
Readable lines go to stderr; the last line on stdout is one JSON object with the figures.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from nats.aio.client import Client as NATS
from PIL import Image

from digits import bus, jobs, subjects
from digits.dataset import Manifest, ShardInfo, ShardWriter, StageInfo, mean_npy_bytes, shard_key
from digits.download_data.synthetic import label_names, make_images
from digits.jobs import Job, JobStore
from digits.store import FileStore
from view_service import classify
from view_service.models import Batcher, Deps, LoadedModel, ModelCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import (  # noqa: E402
    Service,
    Stack,
    Timer,
    arguments,
    finish,
    machine,
    ratio,
    say,
    show,
    start,
    summary,
    versus,
)

CLASSES = 10
LABELS = label_names(CLASSES)
SIDE = 28
SCALE = 1.0 / 255.0  # train_service.session.SCALE
DS, MODEL = "20260101-000000-da7a", "20260101-000001-m0de"
EPOCH = 1.0
TRAIN_SAMPLES = 320  # ten steps of 32: accuracy does not matter here
TOP_K = 5
CLIENTS = (16, 64)  # concurrent requesters, one case each
DIRECT_BATCH = 32  # as many as the service's Batcher puts in one batch
MANY_BATCH = 64  # ClassifyMany's default batch_size
BATCH_MAX, BATCH_DELAY_S = 32, 0.002  # the service's Batcher, as view_service/__main__.py builds it
REQUEST_TIMEOUT_S = 30.0
MANY_TIMEOUT_S = 300.0
WARMUP = 20


def png(array: np.ndarray) -> bytes:
    """A uint8 grey image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def top_k(probs: np.ndarray, k: int = TOP_K) -> list[int]:
    """The ``k`` most likely class indices, as the service orders them."""
    return np.argsort(-probs, kind="stable")[:k].tolist()


# --- the world: store, jobs, images ----------------------------------------------------------


@dataclass
class World:
    """The temporary tree: the store, the data root with its PNG folder, the service's files."""

    root: Path
    store: Path = field(init=False)
    images: Path = field(init=False)
    files: list[Path] = field(default_factory=list)  # in the service's folder-walk order

    def __post_init__(self) -> None:
        self.store = self.root / "store"
        self.images = self.root / "data" / "images"


def write_dataset(world: World, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The dataset as ingest leaves it (manifest, mean.npy, a train shard); its images, labels."""
    folder = world.store / "datasets" / DS
    labels = rng.permutation(np.arange(TRAIN_SAMPLES) % CLASSES)
    images = make_images(labels, CLASSES, SIDE, 1, rng)
    with ShardWriter(folder / shard_key("train_db", 0)) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.put(image, int(label))
    mean = images.astype(np.float64).mean(axis=0)[:, :, None]
    (folder / "mean.npy").write_bytes(mean_npy_bytes(mean))
    stage = StageInfo([ShardInfo(shard_key("train_db", 0), len(labels))], len(labels))
    manifest = Manifest(
        job_id=DS, labels=LABELS, feature_shape=[SIDE, SIDE, 1], stages={"train_db": stage}
    )
    manifest.mean = {"npy": "mean.npy"}
    (folder / "manifest.json").write_bytes(manifest.to_json())
    return images, labels


def train_model(world: World, images: np.ndarray, labels: np.ndarray) -> None:
    """A LeNet trained for a few steps, saved as the train service saves a snapshot."""
    import keras

    from train_service import networks

    keras.utils.set_random_seed(1)
    model = networks.lenet((SIDE, SIDE, 1), CLASSES)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss=loss)
    mean = images.astype(np.float32).mean(axis=0)
    x = ((images.astype(np.float32) - mean) * SCALE)[..., None]
    model.fit(x, labels, batch_size=32, epochs=1, shuffle=False, verbose=0)
    folder = world.store / "models" / MODEL
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    model.save(folder / "snapshots" / f"epoch-{EPOCH:g}.keras")
    info = {
        "job_id": MODEL,
        "name": "lenet",
        "dataset_id": DS,
        "network": "lenet",
        "input_shape": [SIDE, SIDE, 1],
        "labels": LABELS,
        "mean": "image",
        "scale": SCALE,
        "crop_size": None,
        "epochs": EPOCH,
        "snapshots": [EPOCH],
        "metrics": {},
    }
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    (folder / "labels.txt").write_text("\n".join(LABELS))


def write_images(world: World, count: int, rng: np.random.Generator) -> None:
    """``count`` PNG files in class sub-folders of the data root, in folder-walk order."""
    truth = np.arange(count) % CLASSES
    for i, (image, label) in enumerate(
        zip(make_images(truth, CLASSES, SIDE, 1, rng), truth, strict=True)
    ):
        path = world.images / LABELS[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(image))
    world.files = sorted(world.images.rglob("*.png"), key=lambda p: (p.parent.name, p.name))


async def record_jobs(store: JobStore) -> None:
    """The dataset and model job records, as the ingest and train services leave them."""
    form = {"resize_height": SIDE, "resize_width": SIDE, "resize_channels": 1}
    form["resize_mode"] = "squash"
    await store.create(Job(id=DS, type="dataset", name="shapes", form=form, status=jobs.DONE))
    model = Job(
        id=MODEL,
        type="model",
        name="lenet",
        depends_on=[DS],
        form={"use_mean": "image", "network": "lenet"},
        status=jobs.DONE,
        extra={"snapshots": [EPOCH]},
    )
    await store.create(model)


# --- the service -----------------------------------------------------------------------------


def worker_ports(service: Service) -> list[int]:
    """The health ports of the view service's worker processes (its /healthz lists them)."""
    body = json.loads(service.get("/healthz") or b"{}")
    return [int(w["health_port"]) for w in body.get("workers", [])]


def handler_seconds(service: Service, subject: str) -> tuple[float, float]:
    """The view processes' own handler-latency histograms for ``subject``: (sum seconds, count)."""
    found = {"sum": 0.0, "count": 0.0}
    for port in [service.port, *worker_ports(service)]:
        text = (Service(service.child, port).get("/metrics") or b"").decode()
        for kind in found:
            pattern = rf'^digits_handler_seconds_{kind}\{{[^}}]*consumer="{re.escape(subject)}"'
            for line in text.splitlines():
                if re.match(pattern, line):
                    found[kind] += float(line.rsplit(None, 1)[1])
    return found["sum"], found["count"]


def view_memory(service: Service) -> dict[str, Any]:
    """The resident memory of the view service's processes (the parent and its workers)."""
    import psutil

    parent = psutil.Process(service.proc.pid)
    rss = [p.memory_info().rss for p in [parent, *parent.children(recursive=True)]]
    return {
        "processes": len(rss),
        "rss_mb": round(sum(rss) / 2**20, 1),
        "rss_mb_each": [round(r / 2**20, 1) for r in rss],
    }


# --- measurements ----------------------------------------------------------------------------


class Bench:
    """The client connection, the in-process model and the measurements."""

    def __init__(self, nc: NATS, deps: Deps, model: LoadedModel, service: Service) -> None:
        self.nc, self.deps, self.model, self.service = nc, deps, model, service

    async def request(self, subject: str, payload: dict[str, Any], timeout: float) -> Any:
        """One request: msgpack in, msgpack out; an error reply raises."""
        msg = await self.nc.request(subject, msgspec.msgpack.encode(payload), timeout=timeout)
        reply = msgspec.msgpack.decode(msg.data)
        if not reply.get("ok"):
            raise RuntimeError(f"{subject}: {reply.get('error')}")
        return reply

    async def classify(self, image: bytes) -> list[int]:
        """Classify one image through the service; its top-k class indices."""
        req = {"job_id": MODEL, "epoch": EPOCH, "image": image, "top_k": TOP_K}
        reply = await self.request(subjects.RPC_INFER_CLASSIFY, req, REQUEST_TIMEOUT_S)
        return [p["index"] for p in reply["predictions"]]

    def direct(self, image: bytes) -> list[int]:
        """Classify one image in this process: the service's preprocess and predict."""
        x = self.model.preprocess(image)
        return top_k(self.model.predict(x[None])[0])

    async def timed(
        self, images: list[bytes], call: Callable[[bytes], Awaitable[list[int]]]
    ) -> tuple[list[float], list[list[int]]]:
        """Sequential calls, one image each: milliseconds and answers."""
        ms, answers = [], []
        for image in images:
            timer = Timer()
            answers.append(await call(image))
            ms.append(timer.ms)
        return ms, answers

    async def single(self, images: list[bytes], rounds: int) -> dict[str, Any]:
        """Sequential single-image latency: service, direct, and the breakdown, interleaved."""

        async def direct(image: bytes) -> list[int]:
            return self.direct(image)

        async def handler(image: bytes) -> list[int]:
            req = classify.ClassifyOne(job_id=MODEL, epoch=EPOCH, image=image, top_k=TOP_K)
            reply = await classify.classify_one(self.deps, req)
            return [p.index for p in reply.predictions]

        async def resolve(image: bytes) -> list[int]:
            await self.deps.cache.resolve(MODEL, EPOCH)
            return []

        delayed = Batcher(max_batch=BATCH_MAX, max_delay=BATCH_DELAY_S)
        eager = Batcher(max_batch=BATCH_MAX, max_delay=0.0)

        async def handler_eager(image: bytes) -> list[int]:
            self.deps.batcher = eager
            try:
                return await handler(image)
            finally:
                self.deps.batcher = delayed

        self.deps.batcher = delayed
        sides: dict[str, Callable[[bytes], Awaitable[list[int]]]] = {
            "service": self.classify,
            "direct": direct,
            "handler": handler,
            "handler_no_delay": handler_eager,
            "kv_resolve": resolve,
        }
        ms: dict[str, list[float]] = {name: [] for name in sides}
        answers: dict[str, list[list[int]]] = {"service": [], "direct": []}
        for call in sides.values():  # warm every path
            await self.timed(images[:WARMUP], call)
        metric_before = handler_seconds(self.service, subjects.RPC_INFER_CLASSIFY)
        per = -(-len(images) // rounds)
        for lo in range(0, len(images), per):  # take turns, so drift hits every side alike
            chunk = images[lo : lo + per]
            for name, call in sides.items():
                got_ms, got = await self.timed(chunk, call)
                ms[name] += got_ms
                if name in answers:
                    answers[name] += got
        metric_after = handler_seconds(self.service, subjects.RPC_INFER_CLASSIFY)
        agree = sum(
            a[0] == b[0] for a, b in zip(answers["service"], answers["direct"], strict=True)
        )
        if agree != len(images):
            say(f"  warning: service and direct top-1 differ on {len(images) - agree} images")
        service, direct_s = summary(ms["service"]), summary(ms["direct"])
        count = metric_after[1] - metric_before[1]
        server_ms = (metric_after[0] - metric_before[0]) / count * 1e3 if count else float("nan")
        breakdown = {
            "kv_resolve_ms": summary(ms["kv_resolve"]),
            "handler_in_process_ms": summary(ms["handler"]),
            "handler_in_process_no_batch_delay_ms": summary(ms["handler_no_delay"]),
            "service_handler_mean_ms": round(server_ms, 3),
            "transport_mean_ms": round(service["mean"] - server_ms, 3),
        }
        for name, s in (
            ("service (NATS)", service),
            ("direct (in-process)", direct_s),
            ("handler in-process", breakdown["handler_in_process_ms"]),
            ("handler, batcher delay 0", breakdown["handler_in_process_no_batch_delay_ms"]),
            ("KV resolve alone", breakdown["kv_resolve_ms"]),
        ):
            say(show(name, s))
        say(
            f"{'service handler (own)':24s} mean {server_ms:7.3f} ms over {count:.0f} requests; "
            f"transport + client mean {breakdown['transport_mean_ms']:.3f} ms"
        )
        return {
            "requests": len(images),
            "service_ms": service,
            "direct_ms": direct_s,
            "overhead_ms_p50": round(service["p50"] - direct_s["p50"], 3),
            "overhead_ms_p99": round(service["p99"] - direct_s["p99"], 3),
            "ratio_p50": ratio(service["p50"], direct_s["p50"]),
            "ratio_p99": ratio(service["p99"], direct_s["p99"]),
            "top1_agree": agree,
            "breakdown": breakdown,
        }

    async def concurrent_service(
        self, images: list[bytes], count: int, clients: int
    ) -> tuple[float, list[float], int]:
        """``count`` requests from ``clients`` requesters at once: images/s, each latency (ms),
        and how many got a busy reply (they are asked again)."""
        served = busy = 0
        ms: list[float] = []

        async def client() -> None:
            nonlocal served, busy
            while served < count:
                image = images[served % len(images)]
                served += 1
                timer = Timer()
                try:
                    await self.classify(image)
                except RuntimeError as exc:
                    if "busy" not in str(exc):
                        raise
                    busy += 1
                    served -= 1
                    continue
                ms.append(timer.ms)

        timer = Timer()
        await asyncio.gather(*(client() for _ in range(clients)))
        return count / timer.seconds, ms, busy

    def concurrent_direct(self, images: list[bytes], count: int) -> tuple[float, float]:
        """In-process batches of DIRECT_BATCH: images/s with preprocessing, and predict alone."""
        done, predict_s = 0, 0.0
        timer = Timer()
        while done < count:
            n = min(DIRECT_BATCH, count - done)
            chunk = [images[(done + i) % len(images)] for i in range(n)]
            x = np.stack([self.model.preprocess(image) for image in chunk])
            t = time.perf_counter()
            probs = self.model.predict(x)
            predict_s += time.perf_counter() - t
            [top_k(p) for p in probs]
            done += n
        return count / timer.seconds, count / predict_s

    async def concurrent(
        self, images: list[bytes], count: int, rounds: int, clients: int
    ) -> dict[str, Any]:
        """Concurrent single-image requests against in-process batches of 32."""
        await self.concurrent_service(images, min(count, 4 * clients), clients)  # warm
        rates: dict[str, list[float]] = {"service": [], "direct": [], "predict": []}
        lat: list[float] = []
        busy = 0
        for _ in range(rounds):
            rate, ms, refused = await self.concurrent_service(images, count, clients)
            rates["service"].append(rate)
            lat += ms
            busy += refused
            direct_rate, predict_rate = self.concurrent_direct(images, count)
            rates["direct"].append(direct_rate)
            rates["predict"].append(predict_rate)
            say(
                f"concurrent {clients} clients: service {rate:8.1f} img/s  |  direct batch "
                f"{DIRECT_BATCH} {direct_rate:8.1f} img/s (predict alone {predict_rate:8.1f})"
            )
        service, direct = statistics.median(rates["service"]), statistics.median(rates["direct"])
        return {
            "clients": clients,
            "requests": count,
            "busy_replies": busy,
            **versus(service, direct, "service_img_s", "direct_batch32_img_s"),
            "direct_batch32_predict_only_img_s": round(statistics.median(rates["predict"]), 1),
            "service_ms": summary(lat),
        }

    async def many_service(self, world: World) -> tuple[float, dict[str, Any]]:
        """One ClassifyMany over the folder: images/s and the reply."""
        req = {
            "job_id": MODEL,
            "epoch": EPOCH,
            "folder": str(world.images),
            "batch_size": MANY_BATCH,
            "top_k": TOP_K,
            "max_results": 0,
        }
        timer = Timer()
        reply = await self.request(subjects.RPC_INFER_MANY, req, MANY_TIMEOUT_S)
        return reply["count"] / timer.seconds, reply

    def many_direct(self, files: list[Path]) -> float:
        """The files in this process, MANY_BATCH at a time: read, preprocess, predict, top-k."""
        timer = Timer()
        for lo in range(0, len(files), MANY_BATCH):
            x = np.stack(
                [self.model.preprocess(f.read_bytes()) for f in files[lo : lo + MANY_BATCH]]
            )
            [top_k(p) for p in self.model.predict(x)]
        return len(files) / timer.seconds

    async def many(self, world: World, rounds: int) -> dict[str, Any]:
        """ClassifyMany over a folder against the in-process loop, taking turns."""
        service_rates, direct_rates = [], []
        reply: dict[str, Any] = {}
        for _ in range(rounds):
            rate, reply = await self.many_service(world)
            service_rates.append(rate)
            direct_rates.append(self.many_direct(world.files))
            say(
                f"many {len(world.files)} images: service {rate:8.1f} img/s  |  "
                f"direct batch {MANY_BATCH} {direct_rates[-1]:8.1f} img/s"
            )
        if reply.get("count") != len(world.files) or reply.get("skipped"):
            say(
                f"  warning: the service classified {reply.get('count')}, skipped "
                f"{reply.get('skipped')}: {reply.get('skip_reasons')}"
            )
        service, direct = statistics.median(service_rates), statistics.median(direct_rates)
        return {
            "images": len(world.files),
            "batch_size": MANY_BATCH,
            **versus(service, direct, "service_img_s", "direct_img_s"),
            "service_top1_accuracy": reply.get("top1_accuracy"),
        }


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does."""

    single: int  # sequential requests per side
    concurrent: int  # requests per concurrent round
    many: int  # PNG files in the folder
    rounds: int  # turns each side takes


async def run(sizes: Sizes, procs: int) -> dict[str, Any]:
    """Start everything, measure, stop everything, return the figures."""
    with Stack("digits-bench-infer-") as stack:
        world = World(stack.root)
        stack.start_server()
        async with stack.client("bench-infer") as nc:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            kv = await bus.ensure_kv(js)
            job_store = JobStore(js, kv[subjects.KV_JOBS])
            await record_jobs(job_store)
            world.store.mkdir(parents=True)
            world.images.mkdir(parents=True)
            service = stack.start_service(  # it boots while the model trains
                "view_service",
                DIGITS_STORE_URL=world.store.as_uri(),
                DIGITS_DATA_ROOTS=str(world.images.parent),
                DIGITS_DATA_DIR=str(world.root / "service"),
                TF_CPP_MIN_LOG_LEVEL="2",
                DIGITS_VIEW_PROCS=str(procs),
            )
            timer = Timer()
            rng = np.random.default_rng(7)
            images, labels = write_dataset(world, rng)
            await asyncio.to_thread(train_model, world, images, labels)
            write_images(world, sizes.many, rng)
            say(f"store, model and {sizes.many} PNGs written in {timer.seconds:.1f} s")
            await stack.wait_healthy()
            files = FileStore(world.store)
            deps = Deps(
                cache=ModelCache(files, job_store, world.root / "cache"),
                batcher=Batcher(max_batch=BATCH_MAX, max_delay=BATCH_DELAY_S),
                store=files,
                data_roots=(str(world.images.parent),),
                work_dir=world.root / "work",
            )
            model = await deps.cache.get(MODEL, EPOCH)
            bench = Bench(nc, deps, model, service)
            pngs = [f.read_bytes() for f in world.files]
            timer.restart()
            await bench.classify(pngs[0])  # the service loads the model
            say(f"service ready; first request (model load) {timer.seconds:.1f} s")
            singles = [pngs[i % len(pngs)] for i in range(sizes.single)]
            single = await bench.single(singles, sizes.rounds)
            concurrent = {
                f"concurrent{n}": await bench.concurrent(pngs, sizes.concurrent, sizes.rounds, n)
                for n in CLIENTS
            }
            many = await bench.many(world, sizes.rounds)
            memory = view_memory(service)
            say(f"view service: {memory['processes']} processes, RSS {memory['rss_mb']} MiB")
    return {
        "bench": "infer",
        "single": single,
        "concurrent": concurrent["concurrent16"],
        "concurrent64": concurrent["concurrent64"],
        "many": many,
        "view_memory": memory,
        "view_procs": procs,
        "service_batcher": {"max_batch": BATCH_MAX, "max_delay_s": BATCH_DELAY_S},
        "sizes": {"single": sizes.single, "concurrent": sizes.concurrent, "rounds": sizes.rounds},
        "machine": machine(
            "tensorflow", "keras", "numpy", "pillow", "nats-py", nats_server=stack.server_version
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the JSON line."""
    parser = arguments(__doc__, "fewer requests, under a minute")
    parser.add_argument(
        "--procs", type=int, default=0, help="DIGITS_VIEW_PROCS of the service (0: one per core)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        sizes = Sizes(single=200, concurrent=512, many=500, rounds=2)
    else:
        sizes = Sizes(single=600, concurrent=2048, many=2000, rounds=3)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    timer = start()
    return finish(asyncio.run(run(sizes, args.procs or os.cpu_count() or 1)), timer)


if __name__ == "__main__":
    sys.exit(main())
