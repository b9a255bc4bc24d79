"""DIGITS's JSON API: validation, commands published on NATS, owners, errors as JSON."""

from __future__ import annotations

import io

from digits import events, subjects
from tests.gateway.conftest import ADMIN, add_job, basic, stored_events

FOLDER_FORM = {
    "dataset_name": "digits",
    "group_name": "mnist-ish",
    "method": "folder",
    "folder_train": "/data/train",
    "folder_pct_val": "25",
    "resize_width": "28",
    "resize_height": "28",
    "resize_channels": "1",
}
MODEL_FORM = {
    "model_name": "lenet",
    "standard_networks": "lenet",
    "train_epochs": "4",
    "learning_rate": "0.002",
    "batch_size": "32",
    "solver_type": "ADAM",
    "lr_policy": "fixed",
    "random_seed": "7",
}


def test_dataset_form_errors_name_their_fields(client):
    response = client.post("/datasets/images/classification.json", data={}, headers=ADMIN)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert set(errors) == {"dataset_name", "folder_train"}
    bad = {**FOLDER_FORM, "resize_width": "wide", "resize_channels": "2", "method": "ftp"}
    errors = client.post(
        "/datasets/images/classification.json", data=bad, headers=ADMIN
    ).get_json()["errors"]
    assert set(errors) == {"resize_width", "resize_channels", "method"}
    assert "'wide' is not an integer" in errors["resize_width"][0]
    assert "folder, textfile, s3" in errors["method"][0]


def test_creating_a_dataset_publishes_dataset_create_with_its_owner(client, bus_client):
    response = client.post("/datasets/images/classification.json", data=FOLDER_FORM, headers=ADMIN)
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "digits" and body["status"] == "Initialized"
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert isinstance(command, events.DatasetCreate)
    assert command.job_id == body["id"] and command.owner == "admin"
    assert command.name == "digits" and command.group == "mnist-ish"
    assert command.form["folder_train"] == "/data/train"
    assert command.form["resize_width"] == 28 and command.form["folder_pct_val"] == 25
    assert "dataset_name" not in command.form
    # Until a service stores the record, the gateway knows it as submitted.
    shown = client.get(f"/datasets/{body['id']}.json", headers=ADMIN)
    assert shown.status_code == 200 and shown.get_json()["status"] == "Initialized"
    status = client.get(f"/jobs/{body['id']}/status", headers=ADMIN).get_json()
    assert status["status"] == "Initialized"


def test_textfile_lists_can_be_uploaded(client, bus_client):
    form = {
        "dataset_name": "lists",
        "method": "textfile",
        "textfile_train_images": (io.BytesIO(b"a.png 0\nb.png 1\n"), "train.txt"),
    }
    response = client.post("/datasets/images/classification.json", data=form, headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.form["textfile_train_images"] == "a.png 0\nb.png 1\n"


def test_s3_credentials_are_never_echoed(client, bus_client):
    form = {
        "dataset_name": "bucket",
        "method": "s3",
        "s3_bucket": "images",
        "s3_accesskey": "AKIAEXAMPLE",
        "s3_secretkey": "very-secret",
    }
    response = client.post("/datasets/images/classification.json", data=form, headers=ADMIN)
    assert response.status_code == 200
    assert b"very-secret" not in response.data and b"AKIAEXAMPLE" not in response.data
    # The command carries a reference to the secret store, not the keys.
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert "s3_secretkey" not in command.form and command.form["secret_ref"].startswith("secret:")
    assert b"very-secret" not in events.encode(command)
    job = add_job(
        bus_client,
        type="dataset",
        name="stored",
        form={"s3_bucket": "images", "s3_secretkey": "very-secret", "secret_ref": "secret:x"},
    )
    shown = client.get(f"/datasets/{job.id}.json", headers=ADMIN)
    assert shown.get_json()["form"] == {"s3_bucket": "images"}
    assert b"very-secret" not in client.get("/index.json", headers=ADMIN).data


def test_model_form_errors_and_an_unknown_dataset(client):
    response = client.post("/models/images/classification.json", data={}, headers=ADMIN)
    assert set(response.get_json()["errors"]) == {"model_name", "dataset"}
    bad = {**MODEL_FORM, "dataset": "x", "solver_type": "LBFGS", "learning_rate": "fast"}
    errors = client.post("/models/images/classification.json", data=bad, headers=ADMIN).get_json()[
        "errors"
    ]
    assert set(errors) == {"solver_type", "learning_rate", "dataset"}  # every error at once
    missing = client.post(
        "/models/images/classification.json", data={**MODEL_FORM, "dataset": "nope"}, headers=ADMIN
    )
    assert missing.status_code == 400
    assert "'nope'" in missing.get_json()["errors"]["dataset"][0]


def test_creating_a_model_publishes_model_create(client, bus_client):
    dataset = add_job(bus_client, type="dataset", name="digits", owner="admin")
    form = {**MODEL_FORM, "dataset": dataset.id, "learning_rate": "0.01, 0.001"}
    response = client.post("/models/images/classification.json", data=form, headers=ADMIN)
    assert response.status_code == 200
    job_id = response.get_json()["id"]
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert isinstance(command, events.ModelCreate)
    assert command.job_id == job_id and command.dataset_id == dataset.id
    assert command.owner == "admin" and command.name == "lenet"
    assert command.form["train_epochs"] == 4 and command.form["batch_size"] == 32
    assert command.form["solver_type"] == "ADAM" and command.form["learning_rate"] == "0.01, 0.001"
    assert client.get(f"/models/{job_id}.json", headers=ADMIN).get_json()["status"] == "Initialized"


def test_model_json_reports_snapshots_and_progress(client, bus_client):
    model = add_job(
        bus_client,
        type="model",
        name="m",
        form={"train_epochs": 4},
        depends_on=["d"],
        extra={"snapshots": [1, 2]},
    )
    progress = events.TrainProgress(job_id=model.id, epoch=2.0, metrics={"loss": 0.5})
    from digits import bus

    assert bus_client.nc is not None
    bus_client.call(bus.publish_event(bus_client.nc.jetstream(), progress))
    body = client.get(f"/models/{model.id}.json", headers=ADMIN).get_json()
    assert body["snapshots"] == [1, 2] and body["dataset_id"] == "d"
    assert body["epoch"] == 2.0 and body["progress"] == 0.5
    assert body["metrics"] == {"loss": 0.5}
    index = client.get("/index.json", headers=ADMIN).get_json()
    assert [m["id"] for m in index["models"]] == [model.id] and index["datasets"] == []
    assert client.get(f"/datasets/{model.id}.json", headers=ADMIN).status_code == 404


def test_unknown_jobs_are_404_with_their_id(client):
    for method, path in [
        ("get", "/datasets/20260101-000000-abcd.json"),
        ("get", "/models/20260101-000000-abcd.json"),
        ("get", "/jobs/20260101-000000-abcd/status"),
        ("delete", "/jobs/20260101-000000-abcd"),
        ("post", "/jobs/20260101-000000-abcd/abort"),
    ]:
        response = getattr(client, method)(path, headers=ADMIN)
        assert response.status_code == 404, path
        assert "20260101-000000-abcd" in response.get_json()["error"]


def test_only_the_owner_or_an_admin_may_delete_or_abort(client, bus_client, accounts):
    accounts.create_user("alice", "pw-a")
    accounts.create_user("bob", "pw-b")
    job = add_job(bus_client, type="dataset", name="alices", owner="alice")
    bob, alice = basic("bob", "pw-b"), basic("alice", "pw-a")
    refused = client.delete(f"/jobs/{job.id}", headers=bob)
    assert refused.status_code == 403 and job.id in refused.get_json()["error"]
    assert client.post(f"/jobs/{job.id}/abort", headers=bob).status_code == 403
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []
    assert client.post(f"/jobs/{job.id}/abort", headers=alice).status_code == 200
    assert client.delete(f"/jobs/{job.id}", headers=ADMIN).status_code == 200
    found = stored_events(bus_client, f"{subjects.CMD}.job.>")
    assert [type(e) for e in found] == [events.JobAbort, events.JobDelete]
    assert all(e.job_id == job.id for e in found)
    assert found[0].reason == "aborted by alice"


def test_created_jobs_belong_to_the_authenticated_user(client, bus_client, accounts):
    accounts.create_user("carol", "pw-c")
    form = {**FOLDER_FORM, "dataset_name": "carols"}
    client.post("/datasets/images/classification.json", data=form, headers=basic("carol", "pw-c"))
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.owner == "carol"


def test_classify_needs_an_image_and_a_model(client, bus_client):
    model = add_job(bus_client, type="model", name="m", depends_on=["d"])
    url = "/models/images/classification/classify_one.json"
    missing = client.post(url, data={"job_id": model.id}, headers=ADMIN)
    assert missing.status_code == 400 and "image_file" in missing.get_json()["errors"]
    image = (io.BytesIO(b"\x89PNG"), "x.png")
    unknown = client.post(url, data={"job_id": "nope", "image_file": image}, headers=ADMIN)
    assert unknown.status_code == 404 and "'nope'" in unknown.get_json()["error"]
    image = (io.BytesIO(b"\x89PNG"), "x.png")
    nobody = client.post(url, data={"job_id": model.id, "image_file": image}, headers=ADMIN)
    assert nobody.status_code == 503 and "view service" in nobody.get_json()["error"]
    many = client.post(
        "/models/images/classification/classify_many.json",
        data={"job_id": model.id},
        headers=ADMIN,
    )
    assert many.status_code == 400 and "image_list" in many.get_json()["errors"]


def test_a_used_dataset_or_a_finished_job_is_refused_at_once(client, bus_client):
    dataset = add_job(bus_client, type="dataset", name="used", owner="admin", status="D")
    model = add_job(bus_client, type="model", name="user", depends_on=[dataset.id])
    refused = client.delete(f"/jobs/{dataset.id}", headers=ADMIN)
    assert refused.status_code == 409 and model.id in refused.get_json()["error"]
    done = client.post(f"/jobs/{dataset.id}/abort", headers=ADMIN)
    assert done.status_code == 409 and "Done" in done.get_json()["error"]
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_a_json_body_works_like_the_form(client, bus_client):
    body = {**FOLDER_FORM, "resize_width": 32}
    response = client.post("/datasets/images/classification.json", json=body, headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.form["resize_width"] == 32
    wrong = client.post("/datasets/images/classification.json", json=[1], headers=ADMIN)
    assert wrong.status_code == 400 and "object" in wrong.get_json()["error"]


def test_credentials_without_a_secret_key_are_refused(nats_server, tmp_path, monkeypatch):
    from digits.config import Settings
    from gateway.app import create_app
    from tests.gateway.conftest import ADMIN_PASSWORD

    settings = Settings.from_env(
        {"DIGITS_NATS_URL": nats_server.url, "DIGITS_DATA_DIR": str(tmp_path)}
    )
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        form = {"dataset_name": "b", "method": "s3", "s3_bucket": "x", "s3_secretkey": "k"}
        response = app.test_client().post(
            "/datasets/images/classification.json", data=form, headers=ADMIN
        )
        assert response.status_code == 400
        assert "DIGITS_SECRET_KEY" in response.get_json()["errors"]["s3_secretkey"][0]
    finally:
        app.extensions["digits_bus"].close()
