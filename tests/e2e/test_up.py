"""`digits up`: the embedded stack starts, reports every service alive, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import nats
import psutil
import pytest

from digits import events, jobs, natsauth, subjects
from tests.e2e.upstack import Stack, cmdline
from tests.integration.test_jobs import job_store, new_job
from tests.waiting import wait_for, wait_for_sync

pytestmark = pytest.mark.timeout(240)


async def create_job(nats_url: str) -> str:
    """Create a job record directly on the stack's NATS; its id."""
    nc = await nats.connect(nats_url)
    try:
        store = await job_store(nc)
        return (await store.create(new_job("survives restarts"))).id
    finally:
        await nc.close()


async def demo_job(nats_url: str, job_type: str = "dataset", statuses: str = "DAE"):
    """The demo job of ``job_type`` once it has one of ``statuses``."""
    nc = await nats.connect(nats_url)
    try:
        for job in await (await job_store(nc)).list():
            if job.group == "demo" and job.type == job_type and job.status in statuses:
                return job
        return None
    finally:
        await nc.close()


async def find_job(nats_url: str, job_id: str) -> jobs.Job:
    """Read a job record from the stack's NATS."""
    nc = await nats.connect(nats_url)
    try:
        return await (await job_store(nc)).get(job_id)
    finally:
        await nc.close()


async def only_users_get_in(stack: Stack) -> None:
    """The embedded bus refuses anonymous clients; the integrator may only do its part."""
    # A client that does not sign in, speaking the protocol itself (CONNECT without a user).
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.nats_port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        answer = await asyncio.wait_for(reader.readline(), 10)
        assert b"authorization violation" in answer.lower(), answer
    finally:
        writer.close()
        await writer.wait_closed()
    users = stack.data_dir / natsauth.USERS_FILE
    assert users.stat().st_mode & 0o777 == 0o600
    printed = subprocess.run(
        [sys.executable, "-m", "digits.cli", "nats-user", "integrator"],
        env={**os.environ, "DIGITS_DATA_DIR": str(stack.data_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed == stack.nats_url("integrator")
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    nc = await nats.connect(printed, error_cb=on_error)
    try:
        unknown = events.JobDelete(job_id="20990101-000000-dead")  # answered: command.rejected
        ack = await nc.jetstream().publish(subjects.CMD_JOB_DELETE, events.encode(unknown))
        assert ack.stream == subjects.STREAM_CMD
        for subject in (subjects.WORK_TRAIN, f"$KV.{subjects.KV_USERS}.admin"):
            await nc.publish(subject, b"\x80")
        await nc.subscribe(f"$KV.{subjects.KV_USERS}.>")
        await nc.flush()
        await wait_for(lambda: len(refused) >= 3, timeout=10)
        assert all("permissions violation" in r.lower() for r in refused), refused
    finally:
        await nc.close()


def test_digits_up_runs_the_stack_and_a_restart_finds_its_jobs(tmp_path):
    data_dir = tmp_path / "digits"
    stack = Stack(data_dir, tmp_path / "up-1.log", "--demo")
    try:
        report = wait_for_sync(stack.all_alive, timeout=60, interval=0.5)
        assert set(report["services"]) == {"gateway", "ingest", "train", "view"}
        assert all(s["alive"] for s in report["services"].values())
        assert report["nats"]["connected"] is True
        children = stack.children()
        names = " ".join(cmdline(p) for p in children)
        for module in ("gateway", "ingest_service", "train_service", "view_service", "nats-server"):
            assert module in names
        asyncio.run(only_users_get_in(stack))
        nats_url = stack.nats_url()
        job_id = asyncio.run(create_job(nats_url))
        demo = wait_for_sync(lambda: asyncio.run(demo_job(nats_url)), timeout=90, interval=1)
        assert demo.status == jobs.DONE, demo.error
        inspected = subprocess.run(
            [sys.executable, "-m", "digits.cli", "dataset", "inspect", demo.extra["manifest_url"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "750" in inspected and "250" in inspected  # 1,000 images, 25% for validation
        lenet = wait_for_sync(
            lambda: asyncio.run(demo_job(nats_url, "model", "RD")), timeout=90, interval=1
        )
        assert lenet.name == "LeNet (demo)"
        crashed = next(p for p in children if "train_service" in cmdline(p))
        crashed.kill()  # the supervisor restarts it

        def train_restarted() -> bool:
            cmdlines = [cmdline(p) for p in stack.children() if p.is_running()]
            return any("train_service" in c for c in cmdlines) and bool(stack.all_alive())

        wait_for_sync(train_restarted, timeout=60, interval=0.5)
        children = stack.children()
    finally:
        code = stack.interrupt()
    assert code == 0, stack.log_path.read_text()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after SIGINT: {alive}"
    assert (data_dir / "jetstream").is_dir() and (data_dir / "secret.key").is_file()

    again = Stack(data_dir, tmp_path / "up-2.log")
    try:
        wait_for_sync(again.all_alive, timeout=60, interval=0.5)
        job = asyncio.run(find_job(again.nats_url(), job_id))
        assert job.name == "survives restarts"
    finally:
        assert again.interrupt() == 0
