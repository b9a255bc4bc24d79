"""View processes take turns out of the queue group: member files, the turn lock, dead siblings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from view_service.turns import LOADER_NICE, Turns, out_of_group_loader

# Two live processes' pids: this one and its parent stand for two view processes.
A, B = os.getpid(), os.getppid()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


async def test_a_process_leaves_only_while_a_sibling_serves(tmp_path):
    a = Turns(tmp_path, list, pid=A).start()
    b = Turns(tmp_path, list, pid=B)
    assert a.siblings_serving() == 0  # b has not started serving
    async with a.out("loading") as left:
        assert left is False  # nobody else would answer: a loads while it serves
    assert a.outings == []

    b.start()
    assert a.siblings_serving() == 1 and b.siblings_serving() == 1
    async with a.out("loading") as left:
        assert left is True
        assert b.siblings_serving() == 0  # a is out: b must not leave now
    assert b.siblings_serving() == 1 and len(a.outings) == 1
    (left_at, back_at) = a.outings[0]
    assert left_at < back_at

    b.stop()
    assert not (tmp_path / f"member-{B}").exists()
    async with a.out("loading") as left:
        assert left is False
    a.stop()


async def test_a_dead_process_member_file_counts_for_nothing_and_is_swept(tmp_path):
    stale = tmp_path / f"member-{dead_pid()}"
    stale.write_text("")  # left behind: its lock died with its process
    a = Turns(tmp_path, list, pid=A)
    assert a.siblings_serving() == 0
    a.start()
    assert not stale.exists()
    async with a.out("loading") as left:
        assert left is False
    a.stop()


async def test_turns_are_taken_one_at_a_time(tmp_path):
    a = Turns(tmp_path, list, pid=A).start()
    b = Turns(tmp_path, list, pid=B).start()
    order: list[str] = []
    a_out = asyncio.Event()

    async def first() -> None:
        async with a.out("loading") as left:
            assert left
            order.append("a out")
            a_out.set()
            await asyncio.sleep(0.3)
            order.append("a back")

    async def second() -> None:
        await a_out.wait()
        async with b.out("loading") as left:
            assert left  # a is back in the group by now
            order.append("b out")

    await asyncio.wait_for(asyncio.gather(first(), second()), 10)
    assert order == ["a out", "a back", "b out"]
    assert a.outings[0][1] <= b.outings[0][0]  # the periods out do not overlap
    a.stop()
    b.stop()


@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are Linux's")
def test_the_out_of_group_loader_runs_at_the_lowest_priority_and_only_it():
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    loader = out_of_group_loader()
    try:
        assert loader.submit(nice).result(timeout=10) == LOADER_NICE
    finally:
        loader.shutdown()
    assert nice() == before  # the calling thread (and so the process's others) keep theirs
