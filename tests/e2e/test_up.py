"""`digits up`: the embedded stack starts, reports every service alive, and stops cleanly."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats
import psutil
import pytest

from digits import jobs
from tests.e2e.upstack import Stack, cmdline
from tests.integration.test_jobs import job_store, new_job
from tests.waiting import wait_for_sync

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
        nats_url = f"nats://127.0.0.1:{stack.nats_port}"
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
        job = asyncio.run(find_job(f"nats://127.0.0.1:{again.nats_port}", job_id))
        assert job.name == "survives restarts"
    finally:
        assert again.interrupt() == 0
