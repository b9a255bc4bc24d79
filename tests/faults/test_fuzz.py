"""A seeded property-based fuzz of every subject a service consumes, against the real services.

Every durable consumer of ``digits.subjects.CONSUMERS`` (commands, work items, S3 notifications,
job status facts, max-deliveries advisories) and every ``rpc`` subject gets hypothesis-made
payloads: bytes that are not msgpack, random msgpack values, maps with random keys, and the
contract's own message (``digits.events`` / the view service's request types) with one field
changed, removed or added. Then:

- every stream message settles (acked or terminated, nothing left pending); one that does not
  decode by its contract is dead-lettered at its first delivery with a reason; a command that
  decodes is carried out (its job exists) or rejected with ``command.rejected``, never dropped;
  no message ends as a handler crash (a dead letter "gave up after ...: TypeError: ...");
- every rpc request gets a reply naming the reason (not a timeout, not a crash);
- ingest, train and view stay alive and healthy, heartbeats flowing; afterwards a small folder
  dataset is built and a tiny model answers a classify request.

``DIGITS_FUZZ_SEED=<n>`` replays a run; the seed in use is printed.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from digits import bus, commands, events, jobs, subjects
from digits.jobs import Job, JobStore
from digits.notifications import NotificationError, parse_notification
from tests.faults.conftest import ServiceStack
from tests.integration.test_ingest import make_folder
from train_service.registry_worker import RegistryCommand
from view_service.handlers import ROUTES

SEED = int(os.environ.get("DIGITS_FUZZ_SEED") or 20261207)
STREAM_EXAMPLES = int(os.environ.get("DIGITS_FUZZ_EXAMPLES") or 30)  # per stream subject
RPC_EXAMPLES = 2 * STREAM_EXAMPLES  # per rpc subject: replies are quick
SETTLE_S = 60.0  # a message must be settled (acked or terminated) within this
MODEL, MODEL_DATASET = "20260101-000000-f0dd", "20260101-000000-f0da"
pytestmark = pytest.mark.timeout(max(300, 8 * STREAM_EXAMPLES))  # shrinking a failure takes time
CRASHES = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, Exception)}

# Stand-ins in a generated message, replaced when the example runs (fresh for each one).
VICTIM = "@victim@"  # a job that exists: a Running dataset, made for this example
NOJOB = "@nojob@"  # a job id that names no job
EVENT_ID = "@event-id@"
NAME = "@name@"
DELETE = object()  # as a mutation: the field is left out

# --- what hypothesis draws --------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    ".",
    "*",
    ">",
    "a.b",
    "a b",
    "../../etc/passwd",
    "/etc",
    "\x00",
    "\r\n",
    "ü€😀",
    "$JS.API",
    "x" * 3000,
    "20260101-000000-dead",
    ",".join(["0.1"] * 300),
    "-1",
    "nan",
]
ODD_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 1e308, -0.0]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from(ODD_NUMBERS),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
    st.binary(max_size=30),
)
map_keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["type", "job_id", "event_id", "form", "name", "occurred_at"]),
    st.integers(-3, 3),
    st.binary(max_size=4),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(map_keys, inner, max_size=4),
    max_leaves=10,
)
plain_scalars = st.one_of(  # what both msgpack and JSON can carry
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(ODD_NUMBERS),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
)
json_junk = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=10,
)
job_ref = st.sampled_from([VICTIM, NOJOB])


@dataclass(frozen=True)
class Case:
    """One payload to send: raw bytes, or a value to encode as msgpack or JSON, and its origin."""

    encoding: str  # "raw", "msgpack" or "json"
    value: Any
    origin: str  # "bytes", "junk", "random map", "valid", "mutated <field>", "extra field"


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``tree`` with the value at ``path`` replaced (or removed, for DELETE)."""
    head, rest = path[0], path[1:]
    if isinstance(tree, list):
        if not isinstance(head, int) or head >= len(tree):
            return tree
        copy = list(tree)
        if rest:
            copy[head] = _set(copy[head], rest, value)
        elif value is DELETE:
            del copy[head]
        else:
            copy[head] = value
        return copy
    if not isinstance(tree, dict):
        return tree
    copy = dict(tree)
    if rest:
        copy[head] = _set(copy.get(head, {}), rest, value)
    elif value is DELETE:
        copy.pop(head, None)
    else:
        copy[head] = value
    return copy


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a message: each map key and list index, nested ones included."""
    found = []
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


def cases(base: Callable[[Any], dict], refs: st.SearchStrategy, extra: list[tuple], values=junk):
    """Payloads for one contract: ``base(ref)`` is a valid message; mutants change one thing."""
    encoding = "msgpack" if values is junk else "json"
    keys = map_keys if values is junk else st.text(max_size=12)

    def mutated(draw_ref: Any, path: tuple, value: Any) -> Case:
        message = base(draw_ref)
        label = ".".join(str(p) for p in path)
        return Case(encoding, _set(message, path, value), f"mutated {label}")

    def paths_for(ref: Any) -> st.SearchStrategy:
        return st.sampled_from(_paths(base(ref)) + extra)

    mutants = refs.flatmap(
        lambda ref: st.tuples(st.just(ref), paths_for(ref), st.one_of(values, st.just(DELETE)))
    ).map(lambda t: mutated(*t))
    # The same type with an odd value: messages that decode, for the handlers to meet.
    odd = refs.flatmap(
        lambda ref: paths_for(ref).flatmap(
            lambda path: st.tuples(st.just(ref), st.just(path), same_kind(_get(base(ref), path)))
        )
    ).map(lambda t: mutated(*t))
    tag = base(NOJOB).get("type")
    random_map = st.dictionaries(keys, values, max_size=6)
    return st.one_of(
        st.binary(max_size=80).map(lambda b: Case("raw", b, "bytes")),
        values.map(lambda v: Case(encoding, v, "junk")),
        random_map.map(lambda m: Case(encoding, {"type": tag, **m} if tag else m, "random map")),
        refs.map(lambda ref: Case(encoding, base(ref), "valid")),
        st.tuples(refs, st.text(min_size=1, max_size=10), values).map(
            lambda t: Case(encoding, {**base(t[0]), t[1]: t[2]}, "extra field")
        ),
        mutants,
        odd,
        odd,  # twice: most of the bugs are one odd value away from a good message
    )


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    """The value at ``path`` (None where there is none)."""
    for part in path:
        if isinstance(tree, dict):
            tree = tree.get(part)
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return None
    return tree


def same_kind(value: Any) -> st.SearchStrategy:
    """Values of the type of ``value`` that a contract accepts and a handler may not expect."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        ints = [n for n in ODD_NUMBERS if isinstance(n, int)]
        return st.one_of(st.sampled_from(ints), st.integers(-(2**63), 2**64 - 1))
    if isinstance(value, float):
        return st.one_of(st.floats(), st.sampled_from(ODD_NUMBERS))
    if isinstance(value, str):
        return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=40))
    if isinstance(value, bytes):
        return st.one_of(st.binary(max_size=100), st.integers(1, len(value)).map(value.__getitem__))
    if isinstance(value, list):
        return st.lists(same_kind(value[0]) if value else plain_scalars, max_size=5)
    if isinstance(value, dict):
        return st.dictionaries(st.sampled_from([*value, "x"]) | st.text(max_size=8), plain_scalars)
    return plain_scalars


# --- the contracts, by consumer ---------------------------------------------------------------


def _cmd(cls: type[events.Event], **fields: Any) -> Callable[[Any], dict]:
    return lambda ref: {
        "type": events.tag_of(cls),
        "event_id": EVENT_ID,
        **{k: (ref if v is job_ref else v) for k, v in fields.items()},
    }


FOLDER_FORM = {
    "method": "folder",
    "folder_train": "@data@/nowhere",
    "folder_pct_val": 25,
    "resize_width": 8,
    "resize_height": 8,
    "resize_channels": 1,
    "encoding": "png",
}
# A valid message of each contract, from a job reference (VICTIM or NOJOB).
BASES: dict[type[events.Event], Callable[[Any], dict]] = {
    events.DatasetCreate: _cmd(events.DatasetCreate, name=NAME, form=FOLDER_FORM, owner="fuzz"),
    events.ModelCreate: lambda ref: (
        _cmd(events.ModelCreate)(ref)
        | {"name": NAME, "dataset_id": NOJOB, "form": {"epochs": 1, "learning_rate": 0.01}}
    ),
    events.JobAbort: _cmd(events.JobAbort, job_id=job_ref, reason="fuzz"),
    events.JobDelete: _cmd(events.JobDelete, job_id=job_ref),
    events.JobEdit: _cmd(events.JobEdit, job_id=job_ref, name="renamed", notes="fuzzed"),
    events.IngestShard: _cmd(
        events.IngestShard,
        job_id=job_ref,
        stage="train_db",
        shard=0,
        shards=1,
        entries_key="datasets/x/work/train_db-0.msgpack",
        count=1,
        version=1,
    ),
    events.IngestFinalize: _cmd(events.IngestFinalize, job_id=job_ref, version=1),
    events.TrainWork: _cmd(events.TrainWork, job_id=job_ref),
    events.JobStatusChanged: _cmd(
        events.JobStatusChanged, job_id=job_ref, job_type="dataset", status="D"
    ),
    events.DatasetUpdated: _cmd(
        events.DatasetUpdated,
        job_id=job_ref,
        manifest_url="file:///nowhere/manifest.json",
        version=2,
        counts={"train_db": 5},
    ),
    events.RegistryRegister: _cmd(
        events.RegistryRegister, name="fuzz-model", job_id=job_ref, owner="fuzz"
    ),
    events.RegistryPromote: _cmd(
        events.RegistryPromote, name="fuzz-model", version=1, owner="fuzz", expected=0
    ),
    events.RegistrySet: _cmd(
        events.RegistrySet, name="fuzz-model", owner="fuzz", rule={"margin": 0.1}
    ),
}
REGISTRY_COMMANDS = (events.RegistryRegister, events.RegistryPromote, events.RegistrySet)
TAGS = st.sampled_from([events.tag_of(c) for c in events.ALL_EVENTS] + ["", "nope"])
CMD_EXTRA = [("type",), ("event_id",), ("occurred_at",)]


def s3_base(_ref: Any) -> dict:
    """An AWS-shaped object-created notification for a bucket nobody watches."""
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": "fuzz-bucket"},
            "object": {"key": "cats/1.png", "size": 10, "eTag": "abc"},
        },
    }
    return {"Records": [record]}


def advisory_base(_ref: Any) -> dict:
    """A max-deliveries advisory for a stream that does not exist."""
    return {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": uuid.uuid4().hex,
        "stream": "FUZZ_NO_STREAM",
        "consumer": "fuzz",
        "stream_seq": 1,
        "deliveries": 5,
    }


def s3_cases() -> st.SearchStrategy:
    """S3 notifications: AWS, SNS-wrapped and MinIO shapes, mutated; JSON junk; msgpack."""
    sns = st.builds(
        lambda c: Case(
            "json", {"Type": "Notification", "Message": json.dumps(c.value)}, f"sns {c.origin}"
        ),
        cases(s3_base, st.just(None), [], values=json_junk).filter(lambda c: c.encoding == "json"),
    )
    minio = st.builds(
        lambda key: Case("json", {"EventName": "s3:ObjectCreated:Put", "Key": key}, "minio key"),
        json_junk,
    )
    msgpacked = junk.map(lambda v: Case("msgpack", v, "msgpack junk"))
    return st.one_of(cases(s3_base, st.just(None), [], values=json_junk), sns, minio, msgpacked)


@dataclass
class StreamContract:
    """How a consumer's messages look and what each one must lead to."""

    decode: Callable[[bytes], Any]  # raises when the consumer must dead-letter at once
    cases: Callable[[str], st.SearchStrategy]  # payloads for a concrete subject
    command: bool = False  # outside input: a decoded one is carried out or rejected


def _contract_cases(subject: str) -> st.SearchStrategy:
    cls = {v: k for k, v in events.COMMAND_SUBJECTS.items()}.get(subject)
    if cls is None:  # a subject inside the consumer's filter that no contract names
        return st.sampled_from(sorted(BASES, key=events.tag_of)).flatmap(
            lambda c: cases(BASES[c], job_ref, CMD_EXTRA)
        )
    return cases(BASES[cls], job_ref, CMD_EXTRA)


def _advisory(data: bytes) -> dict:
    doc = json.loads(data)
    if not isinstance(doc, dict) or not {"stream", "consumer", "stream_seq"} <= doc.keys():
        raise ValueError("not an advisory")
    return doc


def _typed(kind: Any) -> Callable[[bytes], Any]:
    return lambda data: events.decode(data, kind)


CONTRACTS: dict[str, StreamContract] = {
    subjects.CONSUMER_JOB_COMMANDS: StreamContract(
        _typed(commands.JobCommand), _contract_cases, command=True
    ),
    subjects.CONSUMER_DATASET_COMMANDS: StreamContract(
        _typed(events.DatasetCreate), _contract_cases, command=True
    ),
    subjects.CONSUMER_MODEL_COMMANDS: StreamContract(
        _typed(events.ModelCreate), _contract_cases, command=True
    ),
    subjects.CONSUMER_INGEST: StreamContract(_typed(events.Work), _contract_cases),
    subjects.CONSUMER_TRAIN: StreamContract(_typed(events.TrainWork), _contract_cases),
    subjects.CONSUMER_MODEL_SCHEDULER: StreamContract(
        _typed(events.JobStatusChanged),
        lambda _s: cases(BASES[events.JobStatusChanged], job_ref, CMD_EXTRA),
    ),
    subjects.CONSUMER_REGISTRY_COMMANDS: StreamContract(
        _typed(RegistryCommand), _contract_cases, command=True
    ),
    subjects.CONSUMER_MODEL_FOLLOWERS: StreamContract(
        _typed(events.DatasetUpdated),
        lambda _s: cases(BASES[events.DatasetUpdated], job_ref, CMD_EXTRA),
    ),
    subjects.CONSUMER_S3_NOTIFICATIONS: StreamContract(parse_notification, lambda _s: s3_cases()),
    subjects.CONSUMER_DLQ_FORWARDER: StreamContract(
        _advisory,
        lambda _s: cases(advisory_base, st.just(None), [], values=json_junk),
    ),
}


def _rpc_bases(png: bytes) -> dict[str, Callable[[Any], dict]]:
    """A valid request per rpc subject, for the tiny model."""
    one = {"job_id": MODEL, "image": png, "top_k": 2}
    many = {"job_id": MODEL, "images": [png, png], "batch_size": 2}
    return {
        subjects.RPC_INFER_CLASSIFY: lambda _r: dict(one),
        subjects.RPC_INFER_MANY: lambda _r: {**many, "top_k": 1, "request_id": "fuzz"},
        subjects.RPC_INFER_TOPN: lambda _r: {**many, "n": 1},
        subjects.RPC_INFER_GENERIC: lambda _r: {**many, "limit": 2, "view_config": {}},
    }


# --- subjects, from digits.subjects -----------------------------------------------------------


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def _constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str) and "." in value
    }


def consumed_subjects() -> dict[str, list[str]]:
    """Per consumer, the subjects to publish on: each constant of digits.subjects its filter
    takes, one subject no constant names (under a ``>``), and wildcards filled in."""
    constants = [v for v in _constants().values() if "*" not in v and ">" not in v]
    out: dict[str, list[str]] = {}
    for spec in subjects.CONSUMERS.values():
        found: list[str] = []
        for pattern in spec.filter_subjects:
            found += [c for c in constants if _matches(pattern, c)]
            found.append(pattern.replace("*", "fuzzjob").replace(">", "fuzz.unknown"))
        out[spec.durable] = sorted(set(found))
    return out


def rpc_subjects() -> list[str]:
    """The rpc subjects of digits.subjects: the RPC_ constants that are no other's prefix."""
    rpc = [v for k, v in _constants().items() if k.startswith("RPC_")]
    return sorted(s for s in rpc if not any(o.startswith(s + ".") for o in rpc))


# --- the bus side: a loop in a thread, observers ----------------------------------------------


class Loop:
    """An asyncio loop in a thread, so that hypothesis (synchronous) can drive async NATS."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 120.0) -> Any:
        """Run ``coro`` on the loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Observer:
    """A client that watches dead letters, rejections and heartbeats, and publishes the fuzz."""

    url: str
    data_root: str
    nc: Any = None
    js: Any = None
    jobs: JobStore | None = None
    idem: Any = None
    dead: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # by command id and by job id
    beats: dict[str, float] = field(default_factory=dict)

    async def start(self) -> None:
        """Connect and subscribe."""
        self.nc = await nats.connect(self.url, max_reconnect_attempts=-1)
        self.js = self.nc.jetstream()
        await bus.ensure_streams(self.js)
        kv = await bus.ensure_kv(self.js)
        self.jobs = JobStore(self.js, kv[subjects.KV_JOBS])
        self.idem = kv[subjects.KV_IDEM]
        await self.nc.subscribe(f"{subjects.DLQ}.>", cb=self._dead)
        await self.nc.subscribe(f"{subjects.EVT}.>", cb=self._event)
        await self.nc.subscribe(f"{subjects.HEARTBEAT}.>", cb=self._beat)

    async def _dead(self, msg: Any) -> None:
        h = msg.headers or {}
        self.dead[(h.get(bus.H_STREAM, ""), h.get(bus.H_SEQ, ""))] = h

    async def _event(self, msg: Any) -> None:
        try:
            event = msgspec.msgpack.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, dict) and event.get("type") == "command.rejected":
            reason = str(event.get("reason"))
            self.rejected[str(event.get("command_id"))] = reason
            self.rejected[f"job:{event.get('job_id')}"] = reason

    async def _beat(self, msg: Any) -> None:
        self.beats[msg.subject.split(".")[3]] = time.monotonic()

    async def close(self) -> None:
        """Close the connection."""
        await self.nc.close()

    def fill(self, tree: Any, fresh: dict[str, str]) -> Any:
        """``tree`` with the stand-ins replaced by this example's values."""
        if isinstance(tree, str):
            for stand_in, value in fresh.items():
                if stand_in in tree:
                    tree = tree.replace(stand_in, value)
            return tree
        if isinstance(tree, list):
            return [self.fill(v, fresh) for v in tree]
        if isinstance(tree, dict):
            return {self.fill(k, fresh): self.fill(v, fresh) for k, v in tree.items()}
        return tree

    async def victim(self) -> str:
        """A new Running dataset job (no plan, no files): what a command may act on."""
        job_id = jobs.new_job_id() + uuid.uuid4().hex[:4]
        assert self.jobs is not None
        await self.jobs.create(Job(id=job_id, type="dataset", name="victim", status=jobs.RUNNING))
        return job_id

    async def payload(self, case: Case, victim: bool = True) -> tuple[bytes, dict[str, str]]:
        """The example's bytes, and the stand-ins' values (a new victim job, if asked)."""
        fresh = {
            VICTIM: await self.victim() if victim else NOJOB,
            NOJOB: f"20000101-000000-{uuid.uuid4().hex[:4]}",
            EVENT_ID: uuid.uuid4().hex,
            NAME: f"fuzz-{uuid.uuid4().hex[:8]}",
            "@data@": self.data_root,
        }
        if case.encoding == "raw":
            return case.value, fresh
        value = self.fill(case.value, fresh)
        if case.encoding == "json":
            return json.dumps(value).encode(), fresh
        return msgpack.packb(value, use_bin_type=True), fresh

    async def settled(self, stream: str, durable: str, seq: int) -> None:
        """Wait until the consumer has settled everything up to ``seq`` (acked or terminated)."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            info = await self.js.consumer_info(stream, durable)
            if info.ack_floor.stream_seq >= seq and not info.num_ack_pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{durable}: message {stream}#{seq} not settled after {SETTLE_S}s "
                    f"(pending {info.num_pending}, unacked {info.num_ack_pending}, "
                    f"redelivered {info.num_redelivered})"
                )
            await asyncio.sleep(0.02)

    async def soon(self, look: Callable[[], Any], within: float = 3.0) -> Any:
        """``look()`` once it is truthy (events arrive just after the ack), else its last value."""
        deadline = time.monotonic() + within
        while not (found := look()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return found


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _crash(reason: str) -> str | None:
    """The built-in exception a dead letter's reason names, when a handler crashed on input."""
    text = reason.removeprefix("malformed payload: ")
    if text.startswith("gave up after"):
        text = text.split(": ", 1)[-1]
    name = text.split(":", 1)[0].strip()
    return name if name in CRASHES else None


async def check_stream(
    obs: Observer, durable: str, subject: str, *, case: Case, counts: Counter
) -> None:
    """Publish one stream message and check what became of it."""
    spec = subjects.CONSUMERS[durable]
    contract = CONTRACTS[durable]
    data, fresh = await obs.payload(case)
    if durable == subjects.CONSUMER_MODEL_SCHEDULER:
        subject = subjects.evt_job(fresh[VICTIM], "status")
    ack = await obs.js.publish(subject, data)
    label = subject if durable != subjects.CONSUMER_MODEL_SCHEDULER else spec.filter_subjects[0]
    counts[label] += 1
    await obs.settled(spec.stream, durable, ack.seq)
    where = f"{subject} ({case.origin}) {data[:300]!r}"
    try:
        decoded = contract.decode(data)
        bad: Exception | None = None
    except (msgspec.ValidationError, msgspec.DecodeError, NotificationError, ValueError) as exc:
        decoded, bad = None, exc
    # A dead letter is stored before its message is terminated, and so seen before it settles;
    # the wait covers the callback's turn (and a required one gets longer).
    letter = await obs.soon(lambda: obs.dead.get((spec.stream, str(ack.seq))), 3 if bad else 0.1)
    if letter:
        reason = letter.get(bus.H_REASON, "")
        assert reason, f"{where}: dead-lettered without a reason"
        crash = _crash(reason)
        assert crash is None, f"{where}: the handler crashed ({crash}): {reason}"
        if contract.command:
            assert not reason.startswith("gave up after"), (
                f"{where}: a command was retried then dead-lettered instead of being refused "
                f"with its reason at once: {reason}"
            )
    if bad is not None:
        assert letter, f"{where}: does not decode ({bad}) yet was not dead-lettered"
        assert not letter[bus.H_REASON].startswith("gave up after"), (
            f"{where}: bad input was retried: {letter[bus.H_REASON]}"
        )
    if letter:
        counts[label, "dead-lettered"] += 1
    elif contract.command:
        sent_id = "event_id" in msgspec.msgpack.decode(data)  # else the service makes one up
        counts[label, await check_command(obs, decoded, fresh, where, sent_id)] += 1
    else:
        counts[label, "acked"] += 1  # facts, work, notifications: stale work is dropped by design


async def check_command(
    obs: Observer, cmd: Any, fresh: dict[str, str], where: str, sent_id: bool
) -> str:
    """A decoded command was carried out, or rejected with a reason: which."""

    def rejection() -> str | None:
        by_job = obs.rejected.get(f"job:{getattr(cmd, 'job_id', None)}")
        return obs.rejected.get(cmd.event_id) or by_job

    if await obs.soon(rejection, 0.1):
        return "rejected"
    try:
        await carried_out(obs, cmd, fresh, where, sent_id)
    except AssertionError:
        if not await obs.soon(rejection, 3):
            raise
        return "rejected"
    return "carried out"


async def carried_out(
    obs: Observer, cmd: Any, fresh: dict[str, str], where: str, sent_id: bool
) -> None:
    """A command that was not rejected: its job exists (create) or it named a real job."""
    assert obs.jobs is not None
    if isinstance(cmd, REGISTRY_COMMANDS):  # no model job of "fuzz" exists: none can succeed
        raise AssertionError(f"{where}: {events.tag_of(type(cmd))} was acked without a rejection")
    if isinstance(cmd, events.DatasetCreate | events.ModelCreate):
        prefix = "dataset" if isinstance(cmd, events.DatasetCreate) else "model"
        if sent_id:
            try:
                entry = await obs.idem.get(f"{prefix}-create.{cmd.event_id}")
            except Exception as exc:  # noqa: BLE001 - an event id no claim can be made for
                raise AssertionError(f"{where}: no claim for {cmd.event_id!r}: {exc!r}") from None
            ids = entry.value.decode().split(",")
        else:  # the service made up an event id: find the jobs by name
            ids = [j.id for j in await obs.jobs.list() if j.name.startswith(cmd.name)]
            assert ids, f"{where}: no job called {cmd.name!r}"
        for job_id in ids:
            job = await obs.jobs.get(job_id)  # JobNotFound fails the example
            if prefix == "dataset":
                assert job.status in jobs.TERMINAL and (job.status == jobs.DONE or job.error), (
                    f"{where}: dataset {job_id} is {job.status_name} {job.error!r}"
                )
        return
    assert cmd.job_id == fresh[VICTIM], (
        f"{where}: {events.tag_of(type(cmd))} for {cmd.job_id!r} (no such job) was acked "
        "without a command.rejected"
    )


async def check_rpc(obs: Observer, subject: str, *, case: Case, counts: Counter) -> None:
    """Send one request; the reply must come and name what was wrong."""
    data, _ = await obs.payload(case, victim=False)
    where = f"{subject} ({case.origin}) {data[:300]!r}"
    counts[subject] += 1
    try:
        msg = await obs.nc.request(subject, data, timeout=30)
    except (TimeoutError, nats.errors.Error) as exc:
        raise AssertionError(f"{where}: no reply: {exc!r}") from None
    reply = msgspec.msgpack.decode(msg.data)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), f"{where}: {reply!r}"
    request_type = ROUTES[subject][0]
    try:
        msgspec.msgpack.decode(data, type=request_type)
        malformed = False
    except (msgspec.ValidationError, msgspec.DecodeError):
        malformed = True
    if malformed:
        assert reply["ok"] is False, f"{where}: a malformed request answered {reply}"
        assert str(reply.get("error")).startswith("malformed"), f"{where}: {reply}"
    if not reply["ok"]:
        error = reply.get("error")
        assert isinstance(error, str) and error, f"{where}: an error reply without a reason"
        crash = error.split(":", 1)[0]
        assert crash not in CRASHES, f"{where}: the handler crashed: {error}"
    counts[subject, "answered" if reply["ok"] else "error reply"] += 1


# --- the run ----------------------------------------------------------------------------------

TINY_MODEL = """
import json, sys, keras
folder = sys.argv[1]
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
model.save(f"{folder}/snapshots/epoch-1.keras")
info = {"job_id": sys.argv[2], "dataset_id": sys.argv[3], "labels": ["dark", "light"],
        "mean": "none", "scale": 1 / 255, "crop_size": None, "snapshots": [1.0], "epochs": 1,
        "input_shape": [8, 8, 1], "network": "tiny", "metrics": {}}
open(f"{folder}/info.json", "w").write(json.dumps(info))
"""


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fuzz_stack(service_stack: ServiceStack) -> ServiceStack:
    """Ingest, train and view on one server; a tiny model in the store; retries kept short."""
    folder = service_stack.store / "models" / MODEL
    (folder / "snapshots").mkdir(parents=True)
    builder = subprocess.Popen(
        [sys.executable, "-c", TINY_MODEL, str(folder), MODEL, MODEL_DATASET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for module in ("ingest_service", "train_service", "view_service"):
        service_stack.start(module, DIGITS_MAX_DELIVER="2")
    _, err = builder.communicate(timeout=120)
    assert builder.returncode == 0, err.decode(errors="replace")[-2000:]
    return service_stack


def _fuzz(
    loop: Loop,
    strategy: st.SearchStrategy,
    check: Callable[..., Awaitable[None]],
    examples: int,
    subject: str,
) -> list[str]:
    """Run ``check(case=...)`` on ``examples`` cases drawn from ``strategy``, seeded; the
    (shrunk) failure, if one was found."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @seed(SEED)
    @given(case=strategy)
    def run(case: Case) -> None:
        loop.run(check(case=case))

    try:
        run()
    except Exception as exc:  # noqa: BLE001 - reported with the others at the end
        found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        for one in found:
            print(f"FAILED {subject}: {one}", flush=True)
        return [f"{subject}: {one}" for one in found]
    return []


def test_every_consumed_subject_survives_a_fuzz_and_good_work_still_runs(fuzz_stack):
    print(f"fuzz seed {SEED}: replay with DIGITS_FUZZ_SEED={SEED}", flush=True)
    by_consumer = consumed_subjects()
    assert set(by_consumer) == set(CONTRACTS), (
        f"consumers without a fuzz contract: {sorted(set(by_consumer) - set(CONTRACTS))}"
    )
    untyped = set(events.COMMAND_SUBJECTS) - set(BASES)
    assert not untyped, f"contracts without a fuzz base: {sorted(c.__name__ for c in untyped)}"
    png = _png()
    rpc_bases = _rpc_bases(png)
    assert rpc_subjects() == sorted(ROUTES) == sorted(rpc_bases), (
        f"rpc subjects {rpc_subjects()}, served {sorted(ROUTES)}, fuzzed {sorted(rpc_bases)}"
    )
    counts: Counter = Counter()
    loop = Loop()
    obs = Observer(fuzz_stack.nats.url, str(fuzz_stack.data))
    try:
        loop.run(obs.start())
        loop.run(_prepare(obs, png), timeout=180)

        failures: list[str] = []  # one per subject: each is fuzzed even when another fails
        for durable, subject_list in sorted(by_consumer.items()):
            for subject in subject_list:
                strategy = CONTRACTS[durable].cases(subject)
                check = partial(check_stream, obs, durable, subject, counts=counts)
                failures += _fuzz(loop, strategy, check, STREAM_EXAMPLES, subject)
                assert not fuzz_stack.dead(), fuzz_stack.dead()

        for subject in sorted(rpc_bases):
            base = rpc_bases[subject]
            request_type = ROUTES[subject][0]
            extra = [(f.name,) for f in msgspec.structs.fields(request_type)]
            check = partial(check_rpc, obs, subject, counts=counts)
            strategy = cases(base, st.just(None), extra)
            failures += _fuzz(loop, strategy, check, RPC_EXAMPLES, subject)
            assert not fuzz_stack.dead(), fuzz_stack.dead()

        print("messages fuzzed per subject:", flush=True)
        for subject, n in sorted((k, v) for k, v in counts.items() if isinstance(k, str)):
            ends = ", ".join(
                f"{v} {k[1]}" for k, v in counts.items() if isinstance(k, tuple) and k[0] == subject
            )
            print(f"  {n:5d}  {subject}: {ends}", flush=True)
        expected = {s for subs in by_consumer.values() for s in subs if "fuzzjob" not in s}
        expected |= {subjects.evt_job("*", "status"), *rpc_bases}
        missing = sorted(s for s in expected if counts[s] == 0)
        assert not missing, f"subjects never fuzzed: {missing}"

        reasons = Counter(
            (h.get(bus.H_CONSUMER), h.get(bus.H_REASON, "")[:90]) for h in obs.dead.values()
        )
        if os.environ.get("DIGITS_FUZZ_REASONS"):
            for (consumer, reason), n in sorted(reasons.items()):
                print(f"  {n:4d} {consumer}: {reason}")
        loop.run(_good_work_still_runs(obs, fuzz_stack, png), timeout=240)
        assert not failures, f"seed {SEED}:\n" + "\n\n".join(failures)
    finally:
        try:
            loop.run(obs.close(), timeout=10)
        finally:
            loop.close()


async def _prepare(obs: Observer, png: bytes) -> None:
    """The tiny model's job records, and one answer from it (the view loads Keras once)."""
    assert obs.jobs is not None
    form = {"resize_height": 8, "resize_width": 8, "resize_channels": 1}
    await obs.jobs.create(
        Job(id=MODEL_DATASET, type="dataset", name="tiny", form=form, status=jobs.DONE)
    )
    model = Job(
        id=MODEL,
        type="model",
        name="tiny",
        depends_on=[MODEL_DATASET],
        form={"use_mean": "none"},
        status=jobs.DONE,
        extra={"snapshots": [1.0]},
    )
    await obs.jobs.create(model)
    await _classify(obs, png, timeout=120)


async def _classify(obs: Observer, png: bytes, timeout: float = 30) -> dict:
    request = msgpack.packb({"job_id": MODEL, "image": png, "top_k": 2})
    reply = msgspec.msgpack.decode(
        (await obs.nc.request(subjects.RPC_INFER_CLASSIFY, request, timeout=timeout)).data
    )
    assert reply.get("ok") is True, reply
    assert [p["label"] for p in reply["predictions"]] in (["dark", "light"], ["light", "dark"])
    return reply


async def _good_work_still_runs(obs: Observer, stack: ServiceStack, png: bytes) -> None:
    """Every service alive with heartbeats; a folder dataset is built; the model answers."""
    now = time.monotonic()
    for service in ("ingest", "train", "view"):
        assert now - obs.beats.get(service, 0) < 5, f"no recent heartbeat from {service}"
    make_folder(stack.data / "good", classes=2, per_class=6, size=8)
    command = events.DatasetCreate(
        name="good-after-fuzz", form={**FOLDER_FORM, "folder_train": str(stack.data / "good")}
    )
    await bus.publish_event(obs.js, command)

    async def built() -> Job | None:
        try:
            entry = await obs.idem.get(f"dataset-create.{command.event_id}")
            job = await obs.jobs.get(entry.value.decode())
        except Exception:  # noqa: BLE001 - not yet
            return None
        return job if job.status in jobs.TERMINAL else None

    deadline = time.monotonic() + 120
    while (job := await built()) is None:
        assert time.monotonic() < deadline, "the good dataset did not finish"
        await asyncio.sleep(0.25)
    assert job.status == jobs.DONE, job.error
    assert sum(job.stages[0].counts.values()) == 12
    await _classify(obs, png)
    victim = await obs.victim()
    await bus.publish_event(obs.js, events.JobEdit(job_id=victim, notes="after the fuzz"))
    deadline = time.monotonic() + 20
    while (await obs.jobs.get(victim)).notes != "after the fuzz":
        assert time.monotonic() < deadline, "a good job.edit was not carried out"
        await asyncio.sleep(0.1)
    assert not stack.dead(), stack.dead()
