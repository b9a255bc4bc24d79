"""Every reference a request carries is checked against the caller: one test per route.

Alice owns a dataset and a model; Bob, an ordinary user, tries to use them through each route
(JSON and pages) and is refused with a message naming the job. Alice, and an admin, may.
Describing pages stay open to every signed-in user, as in DIGITS.
"""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from digits import jobs, subjects
from gateway.context import accounts_of, bus_of
from tests.gateway.conftest import (
    ADMIN,
    Browser,
    add_job,
    basic,
    make_app,
    stored_events,
)

pytestmark = pytest.mark.timeout(180)

ALICE, BOB = basic("alice", "pw-alice-1"), basic("bob", "pw-bob-1")
MODEL = {
    "model_name": "mine",
    "method": "standard",
    "standard_networks": "lenet",
    "train_epochs": "1",
    "batch_size": "8",
    "solver_type": "ADAM",
    "learning_rate": "0.01",
    "lr_policy": "fixed",
}


@pytest.fixture
def owned(app, accounts, bus_client):
    """Alice's classification and generic datasets and her trained model, and both users."""
    accounts.create_user("alice", "pw-alice-1")
    accounts.create_user("bob", "pw-bob-1")
    done = {"type": "dataset", "status": jobs.DONE, "owner": "alice"}
    ds = add_job(bus_client, name="shapes", extension="image-classification", **done)
    generic = add_job(bus_client, name="segs", extension="image-segmentation", **done)
    model = add_job(
        bus_client,
        type="model",
        name="lenet",
        status=jobs.DONE,
        owner="alice",
        depends_on=[ds.id],
        extra={"snapshots": [1.0]},
    )
    return {"dataset": ds, "generic": generic, "model": model}


def _image() -> tuple[io.BytesIO, str]:
    return io.BytesIO(b"\x89PNG"), "x.png"


def test_training_on_another_users_dataset_is_refused_by_each_create_route(
    client, bus_client, owned
):
    ds, generic = owned["dataset"], owned["generic"]
    cases = [
        ("/models/images/classification.json", {**MODEL, "dataset": ds.id}, ds),
        ("/models/images/generic.json", {**MODEL, "dataset": generic.id}, generic),
    ]
    for url, form, job in cases:
        refused = client.post(url, data=form, headers=BOB)
        assert refused.status_code == 400, (url, refused.get_json())
        [reason] = refused.get_json()["errors"]["dataset"]
        assert job.id in reason and "belongs to alice" in reason and "train on" in reason
    assert stored_events(bus_client, subjects.CMD_MODEL_CREATE) == []
    for url, form, _ in cases:
        assert client.post(url, data=form, headers=ALICE).status_code == 200, url
        assert client.post(url, data=form, headers=ADMIN).status_code == 200, url
    made = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert [m.owner for m in made] == ["alice", "admin", "alice", "admin"]


def test_starting_from_another_users_model_is_refused(client, bus_client, owned, accounts):
    bob_ds = add_job(
        bus_client, type="dataset", name="bobs", status=jobs.DONE, owner="bob",
        extension="image-classification",
    )  # fmt: skip
    model = owned["model"]
    form = {**MODEL, "dataset": bob_ds.id, "method": "previous", "previous_networks": model.id}
    refused = client.post("/models/images/classification.json", data=form, headers=BOB)
    assert refused.status_code == 400, refused.get_json()
    [reason] = refused.get_json()["errors"]["previous_networks"]
    assert model.id in reason and "start from" in reason
    assert stored_events(bus_client, subjects.CMD_MODEL_CREATE) == []


def test_the_new_model_page_refuses_and_does_not_offer_another_users_jobs(app, client, owned):
    bob = Browser(client)
    assert bob.login("bob", "pw-bob-1").status_code == 302
    page = bob.get("/models/images/classification/new").get_data(as_text=True)
    assert owned["dataset"].id not in page and owned["model"].id not in page
    refused = bob.post("/models/images/classification", {**MODEL, "dataset": owned["dataset"].id})
    assert refused.status_code == 400
    assert "belongs to alice" in refused.get_data(as_text=True)
    alice = Browser(app.test_client())
    alice.login("alice", "pw-alice-1")
    assert owned["dataset"].id in alice.get("/models/images/classification/new").get_data(
        as_text=True
    )


def test_inference_and_download_of_another_users_model_are_refused(client, owned):
    model = owned["model"]
    json_routes = [
        ("/models/images/classification/classify_one.json", {"image_file": _image()}),
        ("/models/images/generic/infer_one.json", {"image_file": _image()}),
        (
            "/models/images/classification/classify_many.json",
            {"image_list": (io.BytesIO(b"/a.png\n"), "list.txt")},
        ),
    ]
    for url, files in json_routes:
        refused = client.post(url, data={"job_id": model.id, **files}, headers=BOB)
        assert refused.status_code == 403, (url, refused.get_json())
        assert model.id in refused.get_json()["error"] and "run it" in refused.get_json()["error"]
    for fmt in ("", ".zip"):
        refused = client.get(f"/models/{model.id}/download{fmt}", headers=BOB)
        assert refused.status_code == 403 and "download it" in refused.get_json()["error"]
    # Alice passes the check: with no view service running, she reaches the bus.
    alone = client.post(
        json_routes[0][0], data={"job_id": model.id, "image_file": _image()}, headers=ALICE
    )
    assert alone.status_code == 503, alone.get_json()


def test_inference_pages_refuse_another_users_model(client, owned):
    model = owned["model"]
    bob = Browser(client)
    bob.login("bob", "pw-bob-1")
    for url in ("classify_one", "classify_many", "top_n", "infer_generic"):
        refused = bob.post(f"/models/{model.id}/{url}", {"image_file": _image()}, htmx=True)
        assert refused.status_code == 403, url
        assert model.id in refused.get_data(as_text=True), url
    assert bob.get(f"/models/{model.id}/generic/view_config", htmx=True).status_code == 403
    # Reading stays open, as in DIGITS: the model's page and JSON, and cloning its form.
    shown = bob.get(f"/models/{model.id}")
    assert shown.status_code == 200 and "only its owner or an admin may download it" in shown.text
    assert f"/models/{model.id}/classify_one" not in shown.text
    assert client.get(f"/models/{model.id}.json", headers=BOB).status_code == 200
    assert bob.get(f"/models/images/classification/new?clone={model.id}").status_code == 200


def test_changing_another_users_job_is_refused(client, bus_client, owned):
    ds = owned["dataset"]
    for refused in (
        client.post(f"/jobs/{ds.id}/abort", headers=BOB),
        client.delete(f"/jobs/{ds.id}", headers=BOB),
    ):
        assert refused.status_code == 403 and ds.id in refused.get_json()["error"]
    bob = Browser(client)
    bob.login("bob", "pw-bob-1")
    for action in ("abort", "delete"):
        refused = bob.post(f"/jobs/{ds.id}/actions/{action}", htmx=True)
        assert refused.status_code == 403 and f"You may not {action}" in refused.text
    for action in ("delete", "abort", "group"):
        form = {"action": action, "job_id": ds.id, "tab": "datasets", "group_name": "mine"}
        bulk = bob.post("/jobs/bulk", form, htmx=True)
        assert "You may not" in bulk.get_data(as_text=True), action
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_a_secret_reference_in_a_request_body_is_refused(client, bus_client, owned):
    """A client cannot name a sealed record: refs are made by the gateway, never taken."""
    form = {
        "dataset_name": "theirs",
        "method": "s3",
        "s3_bucket": "images",
        "secret_ref": "secret:0123456789abcdef",
    }
    response = client.post("/datasets/images/classification.json", data=form, headers=BOB)
    assert response.status_code == 400, response.get_json()
    [reason] = response.get_json()["errors"]["secret_ref"]
    assert "'secret:0123456789abcdef' cannot be given" in reason
    bob = Browser(client)
    bob.login("bob", "pw-bob-1")
    page = bob.post("/datasets/images/classification", form)
    assert page.status_code == 400 and "1 error: secret_ref." in page.get_data(as_text=True)
    model = {**MODEL, "dataset": owned["dataset"].id, "secret_ref": form["secret_ref"]}
    refused = client.post("/models/images/classification.json", data=model, headers=ALICE)
    assert refused.status_code == 400 and "secret_ref" in refused.get_json()["errors"]
    assert stored_events(bus_client, f"{subjects.CMD}.>") == []


def test_an_s3_clone_of_another_users_dataset_does_not_reuse_their_keys(
    app, client, bus_client, owned
):
    keys = {"s3_accesskey": "AKIAEXAMPLE", "s3_secretkey": "very-secret"}
    form = {"dataset_name": "b", "method": "s3", "s3_bucket": "images"}
    alice = Browser(client)
    alice.login("alice", "pw-alice-1")
    assert alice.post("/datasets/images/classification", {**form, **keys}).status_code in (
        200,
        303,
    )
    [first] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    bob = Browser(app.test_client())
    bob.login("bob", "pw-bob-1")
    bob.post("/datasets/images/classification", {**form, "clone_of": first.job_id})
    [_, second] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert second.owner == "bob" and "secret_ref" not in second.form


def test_sharing_every_job_is_the_operators_choice(nats_server, tmp_path, monkeypatch):
    """DIGITS_SHARE_JOBS=1: DIGITS's behaviour, where every user may use every job."""
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", "admin-pw-1")
    shared = make_app(nats_server, tmp_path / "shared")
    shared.config["SETTINGS"] = replace(shared.config["SETTINGS"], share_jobs=True)
    try:
        accounts_of(shared).create_user("alice", "pw-alice-1")
        accounts_of(shared).create_user("bob", "pw-bob-1")
        ds = add_job(
            bus_of(shared), type="dataset", name="shapes", status=jobs.DONE, owner="alice",
            extension="image-classification",
        )  # fmt: skip
        client = shared.test_client()
        form = {**MODEL, "dataset": ds.id}
        made = client.post("/models/images/classification.json", data=form, headers=BOB)
        assert made.status_code == 200, made.get_json()
        assert [c.owner for c in stored_events(bus_of(shared), subjects.CMD_MODEL_CREATE)] == [
            "bob"
        ]
    finally:
        bus_of(shared).close()
