"""The JSON inference routes take ``name@alias``/``name@vN``: checked here, passed on as refs.

The registry records are set directly in the real bucket. A responder on the real bus stands
in for the view service and records what the gateway sends (the view service's own handling of
refs is tests/integration/test_infer_refs.py).
"""

from __future__ import annotations

import io

import msgspec
import pytest

from digits import jobs, subjects
from digits.registry import ModelVersion, RegisteredModel
from tests.gateway.conftest import Browser, add_job, basic

pytestmark = pytest.mark.timeout(120)

ALICE, BOB = basic("alice", "pw-alice-1"), basic("bob", "pw-bob-1")
URL = "/models/images/classification/classify_one.json"


@pytest.fixture
def registered(accounts, bus_client):
    """Alice's model job registered as "shapes" (production -> v1), and a recording responder."""
    accounts.create_user("alice", "pw-alice-1")
    accounts.create_user("bob", "pw-bob-1")
    model = add_job(bus_client, type="model", name="lenet", status=jobs.DONE, owner="alice")
    versions = [ModelVersion(version=1, job_id=model.id, state="done")]
    record = RegisteredModel(
        name="shapes", owner="alice", versions=versions, aliases={"production": 1}
    )
    assert bus_client.registry is not None
    bus_client.call(bus_client.registry.create(record))
    asked: list[dict] = []

    async def answer(msg) -> None:
        request = msgspec.msgpack.decode(msg.data)
        asked.append(request)
        reply = {"ok": True, "job_id": model.id, "epoch": 1.0, "ref": request["job_id"]}
        reply |= {"version": 1, "predictions": [{"label": "a", "index": 0, "confidence": 1.0}]}
        await msg.respond(msgspec.msgpack.encode(reply))

    assert bus_client.nc is not None
    sub = bus_client.call(bus_client.nc.subscribe(subjects.RPC_INFER_CLASSIFY, cb=answer))
    yield model, asked
    bus_client.call(sub.unsubscribe())


def _image() -> tuple[io.BytesIO, str]:
    return io.BytesIO(b"\x89PNG"), "x.png"


def _post(client, job_id: str, who):
    return client.post(URL, data={"job_id": job_id, "image_file": _image()}, headers=who)


def test_a_ref_is_checked_and_passed_on_to_the_view_service(client, registered):
    model, asked = registered
    for ref in ("shapes@production", "shapes@v1"):
        answered = _post(client, ref, ALICE)
        assert answered.status_code == 200, answered.get_json()
        assert answered.get_json()["job_id"] == model.id
        assert asked[-1]["job_id"] == ref  # the ref, so that the view service follows the alias


def test_another_owners_ref_is_refused_naming_it(client, registered):
    _model, asked = registered
    refused = _post(client, "shapes@production", BOB)
    assert refused.status_code == 403, refused.get_json()
    assert "registered model 'shapes' belongs to alice" in refused.get_json()["error"]
    assert not asked


def test_unknown_refs_are_404s_naming_them(client, registered):
    _model, asked = registered
    cases = {
        "nosuch@production": "no registered model is called 'nosuch'",
        "shapes@staging": "'shapes' has no alias 'staging'",
        "shapes@v7": "'shapes' has no version 7",
    }
    for ref, error in cases.items():
        answered = _post(client, ref, ALICE)
        assert answered.status_code == 404, (ref, answered.get_json())
        assert ref in answered.get_json()["error"] and error in answered.get_json()["error"]
    assert not asked


def test_the_classify_page_takes_a_ref_in_its_url(client, registered):
    model, asked = registered
    alice = Browser(client)
    alice.login("alice", "pw-alice-1")
    answered = alice.post(
        "/models/shapes@production/classify_one", {"image_file": _image()}, htmx=True
    )
    assert answered.status_code == 200, answered.get_data(as_text=True)[-500:]
    assert asked[-1]["job_id"] == "shapes@production"


def test_the_classify_page_refuses_another_owners_ref_and_an_unknown_one(client, registered):
    bob = Browser(client)
    bob.login("bob", "pw-bob-1")
    refused = bob.post(
        "/models/shapes@production/classify_one", {"image_file": _image()}, htmx=True
    )
    assert refused.status_code == 403 and "shapes" in refused.get_data(as_text=True)
    missing = bob.post(
        "/models/nosuch@production/classify_one", {"image_file": _image()}, htmx=True
    )
    assert missing.status_code == 404 and "nosuch" in missing.get_data(as_text=True)


@pytest.fixture
def generic_asked(bus_client, registered):
    """A recording responder standing in for the view service on the generic subject."""
    model, _ = registered
    asked: list[dict] = []

    async def answer(msg) -> None:
        request = msgspec.msgpack.decode(msg.data)
        asked.append(request)
        reply = {"ok": True, "job_id": model.id, "epoch": 1.0, "task": "regression"}
        reply |= {"outputs": [{"y": [0.5]}], "input_ids": ["x.png"], "views_html": ["<p>ok</p>"]}
        await msg.respond(msgspec.msgpack.encode(reply))

    sub = bus_client.call(bus_client.nc.subscribe(subjects.RPC_INFER_GENERIC, cb=answer))
    yield model, asked
    bus_client.call(sub.unsubscribe())


def test_the_generic_routes_take_a_ref_and_pass_it_on(client, generic_asked):
    model, asked = generic_asked
    answered = client.post(
        "/models/images/generic/infer_one.json",
        data={"job_id": "shapes@v1", "image_file": _image()},
        headers=ALICE,
    )
    assert answered.status_code == 200, answered.get_json()
    assert answered.get_json()["job_id"] == model.id and asked[-1]["job_id"] == "shapes@v1"
    refused = client.post(
        "/models/images/generic/infer_one.json",
        data={"job_id": "shapes@production", "image_file": _image()},
        headers=BOB,
    )
    assert refused.status_code == 403 and "shapes" in refused.get_data(as_text=True)
    alice = Browser(client)
    alice.login("alice", "pw-alice-1")
    page = alice.post(
        "/models/shapes@production/infer_generic", {"image_file": _image()}, htmx=True
    )
    assert page.status_code == 200, page.get_data(as_text=True)[-500:]
    assert asked[-1]["job_id"] == "shapes@production" and len(asked) == 2
