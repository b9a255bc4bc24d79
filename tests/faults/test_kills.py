"""SIGKILL a random service (or nats-server itself) at random moments while real work runs.

One folder dataset of 2,000 images (and a few corrupt ones) and one LeNet training go through
the real ingest, train, view and gateway services. A seeded plan kills each twice (train no
more: its consumer delivers a job 3 times) and at least 12 times in all, then more at random
while a job is unfinished (at most 30);
each is started again as a supervisor would, and at least 10 kills must land while a job is
unfinished. Then: both
jobs are Done, entries in = entries written + skipped exactly, no shard doubled or missing,
every epoch snapshotted once and training resumed from its checkpoints, and the model answers.
``DIGITS_FAULT_SEED=<n>`` replays a run (the seed is printed).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import msgspec
import nats
import pytest

from digits import dataset, events, jobs, subjects
from digits.dataset_io import ShardReader
from digits.natsserver import NatsServer, free_port
from digits.secrets import SecretBox
from tests.integration.test_ingest import make_folder
from tests.integration.test_jobs import job_store
from tests.services import ServiceProc
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(900)

SEED = int(os.environ.get("DIGITS_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
VICTIMS = ("ingest", "train", "view", "gateway", "nats")
MODULES = {
    "ingest": "ingest_service",
    "train": "train_service",
    "view": "view_service",
    "gateway": "gateway",
}
IMAGES, CORRUPT, EPOCHS, SHARD = 2000, 7, 10, 100
PASSWORD = "fault-admin-pw"
AUTH = {"Authorization": "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()}


class Stack:
    """The four services on one nats-server; each can be SIGKILLed and started again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = NatsServer(root / "jetstream").start()
        self.gateway_port = free_port()
        self.env = {
            "DIGITS_DATA_ROOTS": str(root),
            "DIGITS_STORE_URL": (root / "store").as_uri(),
            "DIGITS_SECRET_KEY": SecretBox.generate_key(),
            "DIGITS_INGEST_PROCS": "1",
            "DIGITS_SHARD_SIZE": str(SHARD),
            "DIGITS_ACK_WAIT_S": "4",
            "DIGITS_HARDWARE_S": "1",
            "DIGITS_VIEW_PROCS": "1",
            "DIGITS_ADMIN_PASSWORD": PASSWORD,
            "DIGITS_PORT": str(self.gateway_port),
        }
        self.procs: dict[str, ServiceProc] = {}
        self.kills: list[tuple[float, str]] = []
        self.started = time.monotonic()
        for name in MODULES:
            self.start(name)
        for proc in self.procs.values():
            proc.wait_healthy(90)

    def start(self, name: str) -> ServiceProc:
        """Start one service (the gateway answers its health on its own port)."""
        proc = ServiceProc(MODULES[name], self.server.url, self.root, **self.env)
        if name == "gateway":
            proc.port = self.gateway_port
        self.procs[name] = proc
        return proc

    def kill(self, name: str, rng: random.Random) -> None:
        """SIGKILL ``name`` and start it again (nats-server on its port and store)."""
        self.kills.append((round(time.monotonic() - self.started, 1), name))
        if name == "nats":
            self.server.kill()
            time.sleep(rng.uniform(0.0, 1.0))
            self.server.start()
            return
        self.procs[name].proc.kill()
        self.procs[name].proc.wait(10)
        self.start(name)

    def healthy(self) -> None:
        """Every service alive and healthy again (a dead one fails with its log)."""
        for proc in self.procs.values():
            proc.wait_healthy(120)

    def close(self) -> None:
        """Stop everything; each service must exit cleanly."""
        try:
            for name, proc in self.procs.items():
                assert proc.stop(60) == 0, f"{name}: {proc.log()[-3000:]}"
        finally:
            self.server.stop()


# The train consumer delivers a job 3 times (max_deliver=3): a job that crashes its worker a
# third time ends in Error, with the reason. So train is killed twice; the others at random.
OTHERS = tuple(v for v in VICTIMS if v != "train")


def plan(rng: random.Random, kills: int) -> list[str]:
    """Each victim twice, the rest drawn at random (train no more), in a random order."""
    chosen = [*VICTIMS, *VICTIMS]
    chosen += rng.choices(OTHERS, k=max(kills - len(chosen), 0))
    rng.shuffle(chosen)
    return chosen


def http(method: str, url: str, data: bytes | None = None, ctype: str = "") -> tuple[int, bytes]:
    """One request to the gateway as admin: (status, body)."""
    headers = {**AUTH, **({"Content-Type": ctype} if ctype else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_form(url: str, fields: dict[str, object]) -> dict:
    """POST a form as JSON; the decoded answer (asserting 200)."""
    status, body = http("POST", url, msgspec.json.encode(fields), "application/json")
    assert status == 200, body
    return msgspec.json.decode(body)


def classify(base: str, job_id: str, image: bytes) -> tuple[int, bytes]:
    """classify_one.json with a multipart upload."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="job_id"\r\n\r\n{job_id}\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="image_file"; filename="x.png"'
        "\r\nContent-Type: image/png\r\n\r\n",
    ]
    body = "".join(parts).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return http(
        "POST",
        f"{base}/models/images/classification/classify_one.json",
        body,
        f"multipart/form-data; boundary={boundary}",
    )


async def _records(
    url: str, ids: list[str], history: bool
) -> tuple[list[jobs.Job | None], list[events.Event]]:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        store = await job_store(nc)
        found = []
        for job_id in ids:
            try:
                found.append(await store.get(job_id))
            except jobs.JobNotFound:
                found.append(None)
        if not history:
            return found, []
        sub = await nc.jetstream().subscribe(subjects.evt_job_all(ids[-1]), ordered_consumer=True)
        stored: list[events.Event] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                stored.append(events.decode(msg.data))
        except TimeoutError:
            pass
        return found, stored
    finally:
        await nc.close()


def records(
    url: str, ids: list[str], history: bool = True
) -> tuple[list[jobs.Job | None], list[events.Event]]:
    """The jobs' records (None while unreadable) and the last job's stored events."""
    try:
        return asyncio.run(_records(url, ids, history))
    except (OSError, TimeoutError, nats.errors.Error):
        return [None] * len(ids), []


def test_random_kills_of_every_service_and_nats_lose_nothing(tmp_path):
    print(f"\nfault seed: {SEED} (DIGITS_FAULT_SEED={SEED} replays this run)")
    rng = random.Random(SEED)
    per_class = IMAGES // 4
    make_folder(tmp_path / "train", classes=4, per_class=per_class, size=16)
    good = (tmp_path / "train" / "class00" / "0000.png").read_bytes()
    for i in range(CORRUPT):
        bad = b"" if i % 3 == 0 else (b"junk" * i if i % 3 == 1 else good[: len(good) // 2])
        (tmp_path / "train" / f"class0{i % 4}" / f"bad{i}.png").write_bytes(bad)

    stack = Stack(tmp_path)
    try:
        base = f"http://127.0.0.1:{stack.gateway_port}"
        form = {"dataset_name": "faults", "method": "folder"}
        form |= {"folder_train": str(tmp_path / "train"), "folder_pct_val": 25}
        form |= {"resize_width": 28, "resize_height": 28, "resize_channels": 1}
        ds_id = post_form(f"{base}/datasets/images/classification.json", form)["id"]
        model_form = {
            "model_name": "lenet-faults",
            "dataset": ds_id,
            "standard_networks": "lenet",
            "train_epochs": EPOCHS,
            "snapshot_interval": 1,
            "batch_size": 32,
            "solver_type": "ADAM",
            "learning_rate": 0.002,
            "random_seed": 7,
        }
        model_id = post_form(f"{base}/models/images/classification.json", model_form)["id"]

        victims = plan(rng, int(os.environ.get("DIGITS_FAULT_KILLS", "12")))
        failure: list[BaseException] = []

        during: list[str] = []  # the jobs' states at each kill

        def killer() -> None:
            # The plan first; then more random kills while a job is unfinished (at most 30).
            try:
                while len(stack.kills) < 30:
                    time.sleep(rng.uniform(0.5, 1.5))
                    found, _ = records(stack.server.url, [ds_id, model_id], history=False)
                    state = "/".join(j.status if j else "?" for j in found)
                    finished = all(x in jobs.TERMINAL for x in state.split("/"))
                    if len(stack.kills) >= len(victims) and finished:
                        return
                    during.append(state)
                    victim = victims[len(stack.kills)] if len(stack.kills) < len(victims) else None
                    stack.kill(victim or rng.choice(OTHERS), rng)
            except BaseException as exc:  # reported by the test below
                failure.append(exc)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        thread.join(600)
        assert not thread.is_alive() and not failure, failure
        print(f"kills (seconds since start, victim): {stack.kills}")
        print(f"dataset/model status at each kill: {during}")
        busy = sum(1 for d in during if any(x not in (*jobs.TERMINAL, "?") for x in d.split("/")))
        stack.healthy()

        def finished() -> tuple[list[jobs.Job], list[events.Event]] | None:
            found, history = records(stack.server.url, [ds_id, model_id])
            if all(j is not None and j.status in jobs.TERMINAL for j in found):
                return found, history  # type: ignore[return-value]
            return None

        (ds, model), history = wait_for_sync(finished, timeout=600, interval=1)
        assert ds.status == jobs.DONE, ds.error
        assert model.status == jobs.DONE, model.error

        # Entries in = entries written + skipped, exactly; no shard doubled or missing.
        data = dataset.open(ds.extra["manifest_url"])
        stages = data.manifest.stages
        written = sum(data.count(s) for s in ("train_db", "val_db"))
        skipped = sum(stages[s].skipped for s in stages)
        assert (written, skipped) == (IMAGES, CORRUPT), (written, skipped)
        for stage in ("train_db", "val_db"):
            shards = stages[stage].shards
            keys = [s.key for s in shards]
            assert keys == [dataset.shard_key(stage, i) for i in range(len(shards))], keys
            assert sum(s.count for s in shards) == data.count(stage)
            for shard, path in zip(shards, data.shard_paths(stage), strict=True):
                with ShardReader(path) as reader:
                    assert sum(1 for _ in reader.raw()) == shard.count, shard.key

        # Every epoch snapshotted once; a resumed run starts from a checkpoint, not scratch.
        assert model.extra["snapshots"] == list(range(1, EPOCHS + 1))
        progress = [e for e in history if isinstance(e, events.TrainProgress)]
        val_epochs = sorted({e.epoch for e in progress if e.phase == "val"})
        assert val_epochs == list(range(1, EPOCHS + 1)), val_epochs
        seen = 0.0
        for epoch in (e.epoch for e in progress if e.phase == "train"):
            assert epoch > math.floor(seen) - 1, f"restarted from scratch at {epoch} after {seen}"
            seen = max(seen, epoch)

        # The model answers through the gateway and the (restarted) view service.
        status, body = classify(base, model_id, good)
        assert status == 200, body
        assert len(msgspec.json.decode(body)["predictions"]) == 4
        counts = {v: sum(1 for _, k in stack.kills if k == v) for v in VICTIMS}
        print(f"kills survived: {len(stack.kills)} {counts}; {written} written + {skipped} skipped")
        assert len(stack.kills) >= 10 and all(counts[v] >= 2 for v in VICTIMS)
        assert busy >= 10, f"only {busy} kills came while a job was unfinished: {during}"
    finally:
        stack.close()
