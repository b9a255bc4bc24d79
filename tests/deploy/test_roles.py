"""`digits serve`: the roles deploy/k8s runs (one work item per Job, idle exit, some consumers)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from digits import bus, subjects
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def serve(url: str, tmp_path, *args: str) -> subprocess.Popen[str]:
    """Start `digits serve ...` against the test's nats-server."""
    env = {**os.environ, "DIGITS_NATS_URL": url, "DIGITS_DATA_DIR": str(tmp_path / "data")}
    env.update(DIGITS_STORE_URL=(tmp_path / "store").as_uri(), DIGITS_INGEST_PROCS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "digits.cli", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_once_takes_one_work_item_settles_it_and_exits(nats_server, nc, tmp_path):
    js = nc.jetstream()
    await bus.ensure_all(js)
    for n in range(2):  # unreadable on purpose: the worker dead-letters what it cannot decode
        await bus.publish(js, subjects.WORK_INGEST_SHARD, b"\xc1", msg_id=f"bad-{n}")
    proc = serve(nats_server.url, tmp_path, "ingest_service", "--once", subjects.CONSUMER_INGEST)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=90)
    assert proc.returncode == 0, out
    info = await js.stream_info(subjects.STREAM_WORK)
    assert info.state.messages == 1, "one item taken and settled, the other left for the next Job"
    dlq = await js.stream_info(subjects.STREAM_DLQ)
    assert dlq.state.messages == 1


async def test_once_exits_when_no_work_comes(nats_server, tmp_path):
    idle = serve(
        nats_server.url, tmp_path, "ingest_service", "--once", "ingest-work", "--idle-exit", "2"
    )
    out, _ = await asyncio.to_thread(idle.communicate, timeout=90)
    assert idle.returncode == 0 and "no work for 2s" in out, out


async def test_consumers_limits_which_consumers_get_pulled(nats_server, nc, tmp_path):
    js = nc.jetstream()
    await bus.ensure_all(js)
    proc = serve(nats_server.url, tmp_path, "ingest_service", "--consumers", "dataset-commands")
    try:

        async def pulling(durable: str, stream: str) -> bool:
            return (await js.consumer_info(stream, durable)).num_waiting > 0

        await wait_for(lambda: pulling("dataset-commands", subjects.STREAM_CMD), timeout=60)
        assert not await pulling(subjects.CONSUMER_INGEST, subjects.STREAM_WORK)
        assert not await pulling(subjects.CONSUMER_JOB_COMMANDS, subjects.STREAM_CMD)
    finally:
        proc.terminate()
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, out


def test_unknown_consumers_are_refused_with_the_known_names(tmp_path):
    proc = serve("nats://127.0.0.1:1", tmp_path, "ingest_service", "--consumers", "nope")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "nope" in out and subjects.CONSUMER_INGEST in out
