"""Turns out of the queue group: a view process loads a new model while its siblings serve.

The responder processes of one view service share a cache directory. There each one holds an
exclusive lock on its own member file for as long as it is in the ``view`` queue group; the
kernel drops the lock when a process dies, so a live, serving sibling is one whose member file
cannot be locked. A process that must load a new alias holder takes the turn lock (one at a
time), and if a sibling serves, it leaves the group, loads, joins again and only then lets the
next one take its turn: the requests go to processes whose cores and GIL no load holds up, and
at least one process always serves. With no sibling serving it loads while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from digits.service import Membership, lower_priority

log = logging.getLogger(__name__)

POLL_S = 0.02  # between tries at the turn lock
OUTINGS_KEPT = 20
SETTLE_S = 0.05  # after rejoining, before the next process may leave (interest propagates)
LOADER_NICE = 19  # the out-of-group loader thread's nice value: the lowest CPU priority


class Turns:
    """The turn lock and the member files of the view processes sharing ``directory``."""

    def __init__(
        self, directory: Path, members: Callable[[], list[Membership]], *, pid: int | None = None
    ) -> None:
        self.directory = directory
        self.members = members  # this process's responders, all leaving and joining together
        self.pid = os.getpid() if pid is None else pid
        self.outings: list[tuple[float, float]] = []  # (left, back) monotonic times, the latest
        self._lock = asyncio.Lock()  # one turn at a time within this process too
        self._member: int | None = None  # the member file's descriptor while in the group
        self._left: float | None = None  # when it left the group, while it is out

    @property
    def _member_path(self) -> Path:
        return self.directory / f"member-{self.pid}"

    def start(self) -> Turns:
        """Create the directory, drop dead processes' member files, mark this one as serving."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("member-*"):
            pid = path.name.removeprefix("member-")
            if pid.isdigit() and int(pid) != self.pid and not _alive(int(pid)):
                path.unlink(missing_ok=True)
        self._member = os.open(self._member_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._member, fcntl.LOCK_EX)
        return self

    def stop(self) -> None:
        """Remove this process's member file."""
        if self._member is not None:
            os.close(self._member)
            self._member = None
        self._member_path.unlink(missing_ok=True)

    def siblings_serving(self) -> int:
        """How many other processes are in the group now (their member files are locked)."""
        count = 0
        for path in self.directory.glob("member-*"):
            if path == self._member_path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # stopped meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                count += 1  # held: that process is alive and serving
            finally:
                os.close(fd)  # closing drops a lock taken here
        return count

    @contextlib.asynccontextmanager
    async def out(self, why: str) -> AsyncIterator[bool]:
        """Hold the turn; out of the group if a sibling serves (yields whether it left)."""
        async with self._lock:
            turn = os.open(self.directory / "turn.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(POLL_S)  # a sibling's turn
                if self._member is None or not self.siblings_serving():
                    yield False
                    return
                try:
                    await self._leave(why)
                    yield True
                finally:
                    await self._join()
            finally:
                os.close(turn)  # releases the turn

    async def _leave(self, why: str) -> None:
        if self._member is not None:
            fcntl.flock(self._member, fcntl.LOCK_UN)  # no sibling counts on this one now
        for member in self.members():
            await member.leave()
        self._left = time.monotonic()
        log.info("out of the queue group while %s", why)

    async def _join(self) -> None:
        if self._left is not None:
            self.outings = [*self.outings, (self._left, time.monotonic())][-OUTINGS_KEPT:]
            self._left = None
        for member in self.members():
            await member.join()
        if self.members():
            await self.members()[0].nc.flush()  # the server has our interest again
        if self._member is None:
            return  # stopped meanwhile
        fcntl.flock(self._member, fcntl.LOCK_EX)
        await asyncio.sleep(SETTLE_S)  # and the cluster's other servers, before a sibling leaves
        log.info("back in the queue group")


def out_of_group_loader() -> ThreadPoolExecutor:
    """One thread at nice 19, under SCHED_IDLE, for the loads a process makes out of the group.

    Out of the group the process serves nobody, so its load may as well yield the cores to
    the siblings that serve. Only those loads run there: a load made while serving stays at
    the serving threads' priority (a low-priority thread holding the GIL would hold their
    requests up). SCHED_IDLE gives a sibling's serving thread the core the moment it wakes
    (bench/load_contention, 15 rounds: the p99 beside a load over 1.3x of alone in 1, worst
    1.56x, against 5 and 2.08x at nice 19 alone). The thread stays so: raising its priority
    again needs privilege.
    """
    return ThreadPoolExecutor(1, thread_name_prefix="view-load", initializer=_lower_priority)


def _lower_priority() -> None:
    lower_priority(LOADER_NICE, idle=True, thread_only=True)  # elsewhere than Linux: unchanged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
