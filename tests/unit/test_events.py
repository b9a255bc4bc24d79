"""Event contracts: golden fixtures decode, plain msgpack in and out, errors name the field."""

from __future__ import annotations

from pathlib import Path

import msgpack
import msgspec
import pytest

from digits import events, subjects
from tests.golden.make_golden import SAMPLES

GOLDEN = Path(__file__).parent.parent / "golden"


def no_ext(code: int, data: bytes) -> None:
    """Fail on any msgpack extension type."""
    raise AssertionError(f"msgpack extension type {code} on the wire")


@pytest.mark.parametrize("cls", events.ALL_EVENTS, ids=lambda c: events.tag_of(c))
def test_golden_fixture_of_each_v1_event_decodes_with_todays_code(cls):
    path = GOLDEN / f"{events.tag_of(cls)}.msgpack"
    assert path.exists(), f"no golden fixture for {cls.__name__}: run tests.golden.make_golden"
    data = path.read_bytes()
    raw = msgpack.unpackb(data, ext_hook=no_ext)
    event = events.decode(data)
    assert type(event) is cls
    assert raw["type"] == events.tag_of(cls)
    for key, value in raw.items():
        if key != "type":
            assert getattr(event, key) == value
    assert events.decode(data, cls) == event


@pytest.mark.parametrize("cls", events.ALL_EVENTS, ids=lambda c: events.tag_of(c))
def test_events_are_plain_msgpack_maps(cls):
    event = cls(**SAMPLES[cls])
    raw = msgpack.unpackb(events.encode(event), ext_hook=no_ext)
    assert isinstance(raw, dict) and raw["type"] == events.tag_of(cls)
    assert isinstance(raw["occurred_at"], float) and len(raw["event_id"]) == 32


def test_a_foreign_command_needs_only_its_own_fields():
    cmd = events.decode(msgpack.packb({"type": "job.delete", "job_id": "x"}), events.Command)
    assert cmd == events.JobDelete(job_id="x", event_id=cmd.event_id, occurred_at=cmd.occurred_at)
    assert len(cmd.event_id) == 32


def test_unknown_fields_are_ignored_so_v1_can_grow():
    data = msgpack.packb({"type": "job.abort", "job_id": "x", "added_in_v1_1": True})
    assert events.decode(data).job_id == "x"


def test_bad_commands_name_what_is_wrong():
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `job_id`"):
        events.decode(msgpack.packb({"type": "job.abort"}))
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'job.explode'"):
        events.decode(msgpack.packb({"type": "job.explode", "job_id": "x"}))
    with pytest.raises(
        msgspec.ValidationError, match=r"Expected `str`, got `int` - at `\$.job_id`"
    ):
        events.decode(msgpack.packb({"type": "job.abort", "job_id": 7}))


def test_subjects_of_events():
    job = "20261127-000000-beef"
    assert events.subject_for(events.JobAbort(job_id=job)) == "digits.v1.cmd.job.abort"
    status = events.JobStatusChanged(job_id=job, job_type="model", status="R")
    assert events.subject_for(status) == f"digits.v1.evt.job.{job}.status"
    beat = events.Heartbeat(service="view", instance="a")
    assert events.subject_for(beat) == "digits.v1.hb.view.a"
    stream_subjects = {s for spec in subjects.STREAMS for s in spec.subjects}
    assert "digits.v1.cmd.>" in stream_subjects and "digits.v1.evt.>" in stream_subjects
