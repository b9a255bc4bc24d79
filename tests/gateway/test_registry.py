"""The registry in the gateway: New Model fields, JSON routes and pages, on a real train service."""

from __future__ import annotations

import re

import pytest

from digits import jobs, subjects
from digits.registry import Follow, ModelVersion, RegisteredModel, Registry
from tests.gateway.conftest import ADMIN, Browser, add_job, basic, stored_events

MODEL_FORM = {"model_name": "lenet", "method": "standard", "standard_networks": "lenet"}
ALICE = basic("alice", "alice-password-1")
BOB = basic("bob", "bob-password-1")


@pytest.fixture
def users(accounts) -> None:
    """Two plain users besides admin."""
    accounts.create_user("alice", "alice-password-1")
    accounts.create_user("bob", "bob-password-1")


@pytest.fixture
def train(stack):
    """A real train service process (it serves the registry commands)."""
    return stack("train_service")


def model(bus_client, owner: str = "alice", status: str = jobs.DONE, acc: float = 0.8) -> jobs.Job:
    """A model job record on its dataset, ended in ``status``."""
    dataset = add_job(bus_client, type="dataset", name="shapes", owner=owner, status=jobs.DONE)
    extra = {"final_metrics": {"val_accuracy": acc, "val_loss": 1 - acc}}
    return add_job(
        bus_client,
        type="model",
        name="lenet",
        owner=owner,
        status=status,
        depends_on=[dataset.id],
        extra=extra,
    )


# --- the New Model form's registry fields (no service needed) --------------------------------


def test_registry_fields_are_checked_and_name_the_bad_value(client, bus_client):
    dataset = add_job(bus_client, type="dataset", name="digits", owner="admin")
    bad = {
        **MODEL_FORM,
        "dataset": dataset.id,
        "registry_name": "bad name!",
        "promote_alias": "v3",
        "follow_min_new_samples": "-1",
        "follow_min_interval_s": "soon",
        "promote_margin": "-0.5",
    }
    response = client.post("/models/images/classification.json", data=bad, headers=ADMIN)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert "'bad name!'" in errors["registry_name"][0]
    assert "'v3'" in errors["promote_alias"][0] and "version number" in errors["promote_alias"][0]
    assert "'-1'" in errors["follow_min_new_samples"][0]
    assert "'soon'" in errors["follow_min_interval_s"][0]
    assert "'-0.5'" in errors["promote_margin"][0]
    follow = {**MODEL_FORM, "dataset": dataset.id, "follow": "finetune"}
    response = client.post("/models/images/classification.json", data=follow, headers=ADMIN)
    assert "needs registry_name" in response.get_json()["errors"]["follow"][0]
    odd = {**MODEL_FORM, "dataset": dataset.id, "registry_name": "shapes", "follow": "always"}
    response = client.post("/models/images/generic.json", json=odd, headers=ADMIN)
    assert response.status_code == 400
    assert "'always'" in response.get_json()["errors"]["follow"][0]
    assert stored_events(bus_client, subjects.CMD_MODEL_CREATE) == []


def test_registry_fields_reach_model_create_converted(client, bus_client):
    dataset = add_job(bus_client, type="dataset", name="digits", owner="admin")
    form = {
        **MODEL_FORM,
        "dataset": dataset.id,
        "registry_name": " shapes ",
        "follow": "Scratch",
        "follow_min_new_samples": "50",
        "follow_min_interval_s": "2.5",
        "promote_alias": "staging",
        "promote_metric": "val_loss",
        "promote_margin": "0.01",
    }
    response = client.post("/models/images/classification.json", data=form, headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert {
        k: command.form[k] for k in form if k.startswith(("registry", "follow", "promote"))
    } == {
        "registry_name": "shapes",
        "follow": "scratch",
        "follow_min_new_samples": 50,
        "follow_min_interval_s": 2.5,
        "promote_alias": "staging",
        "promote_metric": "val_loss",
        "promote_margin": 0.01,
    }


def test_the_new_model_page_shows_registry_fields_and_their_errors(browser, bus_client):
    page = browser.get("/models/images/classification/new").get_data(as_text=True)
    assert 'name="registry_name"' in page and 'name="follow"' in page
    assert 'name="promote_margin"' in page
    dataset = add_job(bus_client, type="dataset", name="digits", owner="admin")
    form = {**MODEL_FORM, "dataset": dataset.id, "registry_name": "no/slash"}
    response = browser.post("/models/images/classification", data=form)
    assert response.status_code == 400
    assert "registry_name &#39;no/slash&#39; is not valid" in response.get_data(as_text=True)


# --- the JSON routes, served by a real train service ---------------------------------------------


def test_register_promote_and_conflicts_through_the_json_api(client, bus_client, users, train):
    first, second = model(bus_client), model(bus_client, acc=0.9)
    response = client.post(
        "/registry.json", json={"name": "shapes", "job_id": first.id}, headers=ALICE
    )
    assert response.status_code == 200, response.get_json()
    record = response.get_json()["registered_model"]
    assert record["owner"] == "alice" and record["versions"][0]["job_id"] == first.id
    response = client.post(
        "/registry.json", json={"name": "shapes", "job_id": second.id}, headers=ALICE
    )
    assert response.get_json()["registered_model"]["latest"] == 2
    again = client.post(
        "/registry.json", json={"name": "shapes", "job_id": first.id}, headers=ALICE
    )
    assert again.status_code == 200 and again.get_json()["registered_model"]["latest"] == 2
    assert len(stored_events(bus_client, subjects.CMD_REGISTRY_REGISTER)) == 2  # no third command
    listed = client.get("/registry.json", headers=BOB).get_json()["registered_models"]
    assert [(m["name"], m["owner"], m["latest"]) for m in listed] == [("shapes", "alice", 2)]

    promote = "/registry/shapes/promote.json"
    response = client.post(promote, json={"version": 1, "expected": 0}, headers=ALICE)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["registered_model"]["aliases"] == {"production": 1}
    assert response.get_json()["command_id"]
    # Someone who saw no holder is refused: production moved to v1 since.
    stale = client.post(promote, json={"version": 2, "expected": 0}, headers=ALICE)
    assert stale.status_code == 409
    assert "moved: it is held by v1 now, not no version" in stale.get_json()["error"]
    assert client.post(promote, json={"version": 2}, headers=BOB).status_code == 403
    # An admin acts for the owner.
    response = client.post(promote, json={"version": 2, "expected": 1}, headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    shown = client.get("/registry/shapes.json", headers=BOB).get_json()
    assert shown["aliases"] == {"production": 2}
    assert [v["aliases"] for v in shown["versions"]] == [[], ["production"]]
    assert [c["kind"] for c in shown["changes"]] == [
        "registered",
        "version",
        "promoted",
        "promoted",
    ]
    assert shown["changes"][-1]["by"] == "alice" and "admin" in shown["changes"][-1]["reason"]

    bad = client.post(promote, json={"version": 7}, headers=ALICE)
    assert bad.status_code == 400 and "has no version 7" in bad.get_json()["error"]
    assert client.post(promote, json={}, headers=ALICE).status_code == 400
    alias = client.post(promote, json={"version": 1, "alias": "v2"}, headers=ALICE)
    assert alias.status_code == 400 and "'v2'" in alias.get_json()["error"]
    assert client.get("/registry/nope.json", headers=ALICE).status_code == 404


def test_the_train_services_refusal_is_a_400_with_its_reason(client, bus_client, users, train):
    failed = model(bus_client, status=jobs.ERROR)
    response = client.post(
        "/registry.json", json={"name": "broken", "job_id": failed.id}, headers=ALICE
    )
    assert response.status_code == 400
    assert "is Error: it cannot be registered" in response.get_json()["error"]
    assert response.get_json()["command_id"]
    theirs = model(bus_client, owner="bob")
    response = client.post("/registry.json", json={"name": "x", "job_id": theirs.id}, headers=ALICE)
    assert response.status_code == 403  # refused at the gateway: no command sent
    bad = client.post("/registry.json", json={"name": "a b", "job_id": theirs.id}, headers=BOB)
    assert bad.status_code == 400 and "'a b'" in bad.get_json()["error"]
    commands = stored_events(bus_client, subjects.CMD_REGISTRY_REGISTER)
    assert [(c.name, c.owner) for c in commands] == [("broken", "alice")]


def test_without_an_answer_the_command_is_202_with_its_id(app, client, bus_client, users):
    app.config["REGISTRY_OUTCOME_S"] = 1.0
    job = model(bus_client)  # no train service: nobody answers
    response = client.post(
        "/registry.json", json={"name": "shapes", "job_id": job.id}, headers=ALICE
    )
    assert response.status_code == 202
    [command] = stored_events(bus_client, subjects.CMD_REGISTRY_REGISTER)
    assert response.get_json()["command_id"] == command.event_id
    assert response.get_json()["pending"] is True


# --- the pages ---------------------------------------------------------------------------------


def seed(bus_client, name: str, owner: str, dataset_id: str, job_ids: list[str]) -> None:
    """A registered model stored directly (two versions, v1 production, following a dataset)."""
    record = RegisteredModel(
        name=name,
        owner=owner,
        versions=[
            ModelVersion(
                version=n,
                job_id=j,
                dataset_id=dataset_id,
                dataset_version=n,
                state="done",
                metrics={"val_accuracy": 0.5 + n / 10},
                mode="finetune" if n > 1 else "",
                parent_version=n - 1 or None,
                note=f"note of v{n}",
            )
            for n, j in enumerate(job_ids, 1)
        ],
        aliases={"production": 1},
        follow=Follow(dataset_id=dataset_id, stopped="the dataset was deleted"),
        changes=[],
    )
    assert bus_client.registry is not None
    reg = Registry(bus_client.registry.kv)
    bus_client.call(reg.create(record))


def test_the_pages_show_versions_aliases_history_and_follow_state(client, bus_client, users, train):
    first, second = model(bus_client), model(bus_client, acc=0.9)
    for job in (first, second):
        response = client.post(
            "/registry.json", json={"name": "shapes", "job_id": job.id}, headers=ALICE
        )
        assert response.status_code == 200
    alice = Browser(client)
    alice.login("alice", "alice-password-1")
    assert "shapes" in alice.get("/registry").get_data(as_text=True)
    page = alice.get("/registry/shapes").get_data(as_text=True)
    assert first.id in page and second.id in page and 'id="version-2"' in page
    assert "Promote to production" in page and 'name="expected" value="0"' in page
    assert f"/models/compare?job_id={first.id}&amp;job_id={second.id}" in page
    response = alice.post(
        "/registry/shapes/promote", data={"version": "2", "alias": "production", "expected": "0"}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    assert "production → v2" in page and "promoted" in page
    stale = alice.post(
        "/registry/shapes/promote", data={"version": "1", "alias": "production", "expected": "0"}
    )
    assert stale.status_code == 409 and "moved:" in stale.get_data(as_text=True)

    bob = Browser(app_client := client.application.test_client())
    bob.login("bob", "bob-password-1")
    page = bob.get("/registry/shapes").get_data(as_text=True)
    assert "Promote to" not in page and second.id in page
    refused = bob.post(
        "/registry/shapes/promote", data={"version": "1", "alias": "production", "expected": "2"}
    )
    assert refused.status_code == 403 and "only its owner or an admin" in refused.get_data(
        as_text=True
    )
    assert app_client.get("/registry/nope").status_code == 404


def test_a_done_model_is_registered_from_its_page_by_its_owner(client, bus_client, users, train):
    job = model(bus_client)
    bob = Browser(client.application.test_client())
    bob.login("bob", "bob-password-1")
    assert 'id="register-form"' not in bob.get(f"/models/{job.id}").get_data(as_text=True)
    alice = Browser(client)
    alice.login("alice", "alice-password-1")
    assert 'id="register-form"' in alice.get(f"/models/{job.id}").get_data(as_text=True)
    response = alice.post(f"/models/{job.id}/register", data={"registry_name": "digits"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/registry/digits")
    assert "digits@v1" in alice.get(f"/models/{job.id}").get_data(as_text=True)
    response = alice.post(f"/models/{job.id}/register", data={"registry_name": "bad name"})
    assert response.status_code == 303
    assert "&#39;bad name&#39; is not valid" in alice.get(f"/models/{job.id}").get_data(
        as_text=True
    )


def test_the_dataset_page_shows_its_versions_and_followers(browser, bus_client):
    dataset = add_job(
        bus_client,
        type="dataset",
        name="grows",
        owner="admin",
        status=jobs.DONE,
        extra={
            "version": 3,
            "finalized": 2,
            "counts": {"train": 120, "val": 30},
            "versions": [
                {"version": 1, "at": 1e9, "added": {"train": 80}, "counts": {"train": 80}},
                {"version": 2, "at": 2e9, "added": {"train": 40}, "counts": {"train": 120}},
            ],
        },
    )
    seed(bus_client, "follower", "admin", dataset.id, [jobs.new_job_id(), jobs.new_job_id()])
    page = browser.get(f"/datasets/{dataset.id}").get_data(as_text=True)
    rows = re.findall(r'<tr id="dataset-version-(\d+)">(.*?)</tr>', page, re.S)
    assert [n for n, _ in rows] == ["3", "2", "1"]  # newest first, the one being built on top
    cells = {n: re.findall(r"<td>(.*?)</td>", row, re.S) for n, row in rows}
    assert "being ingested" in cells["3"][1]
    assert cells["2"][2] == "train +40" and cells["2"][3] == "train 120"
    assert cells["1"][3] == "train 80" and "2033-05-18" in cells["2"][1]  # when v2 was finalized
    assert "follower v1</a> (production)" in cells["1"][4] and "follower v2</a>" in cells["2"][4]
    assert "/registry/follower" in page and "the dataset was deleted" in page
    shown = browser.get("/registry/follower").get_data(as_text=True)
    assert "note of v2" in shown and "stopped: the dataset was deleted" in shown
    assert "production → v1" in shown
