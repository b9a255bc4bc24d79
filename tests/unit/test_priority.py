"""lower_priority: every thread of a process (or the calling one) at a nice value, never raised;
with ``idle``, under the SCHED_IDLE policy too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")

# Run in a child: a nice value, once raised, cannot be lowered again by this test process.
CHILD = """
import json, os, sys, threading
from digits.service import lower_priority

def nice(tid=None):
    tid = threading.get_native_id() if tid is None else tid
    if os.sched_getscheduler(tid) == os.SCHED_IDLE:
        return "idle"
    return os.getpriority(os.PRIO_PROCESS, tid)

os.nice(int(sys.argv[1]))
ready, done = threading.Event(), threading.Event()
before = threading.Thread(target=lambda: (ready.set(), done.wait()))
before.start()
ready.wait()
scope, idle = sys.argv[3] == "thread", sys.argv[4] == "idle"
seen = {"returned": lower_priority(int(sys.argv[2]), idle=idle, thread_only=scope)}
seen["main"] = nice()
seen["started_before"] = nice(before.native_id)
after = []
t = threading.Thread(target=lambda: after.append(nice()))
t.start()
t.join()
seen["started_after"] = after[0]
done.set()
print(json.dumps(seen))
"""


def niced(start: int, nice: int, scope: str, policy: str = "normal") -> dict[str, int | str]:
    """What the child saw: the returned value, its threads' values ("idle" under SCHED_IDLE)."""
    argv = [sys.executable, "-c", CHILD, str(start), str(nice), scope, policy]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(proc.stdout)


def test_every_thread_now_and_every_thread_started_later_gets_the_value():
    assert niced(0, 12, "process") == {
        "returned": 12,
        "main": 12,
        "started_before": 12,
        "started_after": 12,
    }


def test_only_the_calling_thread_and_those_it_starts_with_thread_only():
    assert niced(0, 12, "thread") == {
        "returned": 12,
        "main": 12,
        "started_before": 0,
        "started_after": 12,
    }


def test_a_higher_value_stays():
    seen = niced(15, 12, "process")
    assert (seen["returned"], seen["started_before"]) == (15, 15)


def test_idle_puts_every_thread_now_and_later_under_sched_idle():
    assert niced(0, 19, "process", "idle") == {
        "returned": 19,
        "main": "idle",
        "started_before": "idle",
        "started_after": "idle",
    }


def test_idle_with_thread_only_leaves_the_other_threads_normal():
    assert niced(0, 19, "thread", "idle") == {
        "returned": 19,
        "main": "idle",
        "started_before": 0,
        "started_after": "idle",
    }
