"""The model archive download and the generic model create JSON route, on a real nats-server."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from digits import jobs, subjects
from tests.gateway.conftest import ADMIN, add_job, stored_events

pytestmark = pytest.mark.timeout(180)


def store_root(app) -> Path:
    """The gateway's file store folder."""
    return Path(unquote(urlparse(app.config["SETTINGS"].store_url).path))


def trained(app, bus_client, snapshots=(1.0, 2.0)) -> jobs.Job:
    """A finished model whose files are in the store as train_service leaves them."""
    ds = add_job(bus_client, type="dataset", name="shapes", status=jobs.DONE)
    job = add_job(
        bus_client,
        type="model",
        name="lenet",
        status=jobs.DONE,
        depends_on=[ds.id],
        extra={"snapshots": list(snapshots)},
    )
    root = store_root(app)
    folder = root / "models" / job.id
    (folder / "snapshots").mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"job_id": job.id, "labels": ["a", "b"]}))
    (folder / "labels.txt").write_text("a\nb")
    (folder / "network.json").write_text("{}")
    for epoch in snapshots:
        (folder / "snapshots" / f"epoch-{epoch:g}.keras").write_bytes(b"weights %g" % epoch)
    for name, data in SAVED_MODEL.items():  # train_service/export.py's files, final model
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (root / "datasets" / ds.id).mkdir(parents=True)
    (root / "datasets" / ds.id / "mean.npy").write_bytes(b"mean")
    return job


SAVED_MODEL = {
    "saved_model/saved_model.pb": b"graph",
    "saved_model/fingerprint.pb": b"print",
    "saved_model/variables/variables.index": b"index",
    "saved_model/variables/variables.data-00000-of-00001": b"\0" * 3000,
}


def members(response) -> dict[str, bytes]:
    """The files of a .tar.gz response, by name."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.get_data()), mode="r:gz") as tar:
        assert all(m.isfile() for m in tar.getmembers())
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def zip_members(response) -> dict[str, bytes]:
    """The files of a .zip response, by name (its CRCs checked)."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.get_data())) as z:
        assert z.testzip() is None
        return {name: z.read(name) for name in z.namelist()}


def test_download_streams_the_latest_snapshot_with_its_files(app, client, bus_client):
    job = trained(app, bus_client)
    response = client.get(f"/models/{job.id}/download", headers=ADMIN)
    files = members(response)
    assert sorted(files) == sorted(
        ["epoch-2.keras", "info.json", "labels.txt", "mean.npy", "network.json", *SAVED_MODEL]
    )
    assert {name: files[name] for name in SAVED_MODEL} == SAVED_MODEL
    assert json.loads(files["info.json"])["job_id"] == job.id
    assert files["epoch-2.keras"] == b"weights 2"
    disposition = response.headers["Content-Disposition"]
    assert disposition == f'attachment; filename="{job.id}_epoch_2.tar.gz"'
    one = members(client.get(f"/models/{job.id}/download?epoch=1", headers=ADMIN))
    assert "epoch-1.keras" in one and "epoch-2.keras" not in one
    assert not any(n.startswith("saved_model/") for n in one), "the export is the final model's"
    every = members(client.get(f"/models/{job.id}/download?epoch=all", headers=ADMIN))
    assert {"epoch-1.keras", "epoch-2.keras", *SAVED_MODEL} <= set(every)


def test_download_suffixes_pick_tar_gz_or_zip(app, client, bus_client):
    job = trained(app, bus_client)
    plain = members(client.get(f"/models/{job.id}/download", headers=ADMIN))
    tgz = client.get(f"/models/{job.id}/download.tar.gz?epoch=2", headers=ADMIN)
    assert members(tgz) == plain
    assert tgz.headers["Content-Disposition"].endswith(f'filename="{job.id}_epoch_2.tar.gz"')
    response = client.get(f"/models/{job.id}/download.zip", headers=ADMIN)
    assert zip_members(response) == plain
    assert response.headers["Content-Disposition"].endswith(f'filename="{job.id}_epoch_2.zip"')
    one = zip_members(client.get(f"/models/{job.id}/download.zip?epoch=1", headers=ADMIN))
    assert sorted(one) == ["epoch-1.keras", "info.json", "labels.txt", "mean.npy", "network.json"]
    assert client.get(f"/models/{job.id}/download.rar", headers=ADMIN).status_code == 404
    assert client.get(f"/models/{job.id}/download.zip").status_code == 401


def test_download_errors_name_the_problem(app, client, bus_client):
    job = trained(app, bus_client)
    missing = client.get(f"/models/{job.id}/download?epoch=7", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.get_json()["error"].endswith("no snapshot at epoch 7; it has 1, 2")
    bad = client.get(f"/models/{job.id}/download?epoch=last", headers=ADMIN)
    assert bad.status_code == 400 and "epoch 'last'" in bad.get_json()["error"]
    fresh = add_job(bus_client, type="model", name="new", status=jobs.RUNNING)
    none = client.get(f"/models/{fresh.id}/download", headers=ADMIN)
    assert none.status_code == 404 and "no snapshot yet" in none.get_json()["error"]
    unknown = client.get("/models/20990101-000000-beef/download", headers=ADMIN)
    assert unknown.status_code == 404
    assert client.get(f"/models/{job.id}/download").status_code == 401


def test_download_works_from_the_page_session(app, browser, bus_client):
    job = trained(app, bus_client, snapshots=(1.0,))
    assert "epoch-1.keras" in members(browser.get(f"/models/{job.id}/download"))


def test_generic_json_creates_a_model_on_a_generic_dataset(client, bus_client):
    generic = add_job(bus_client, type="dataset", name="g", extension="image-segmentation")
    form = {"model_name": "seg", "dataset": generic.id, "train_epochs": "2", "lr_policy": "fixed"}
    response = client.post("/models/images/generic.json", data=form, headers=ADMIN)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["name"] == "seg" and body["status"] == "Initialized"
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.job_id == body["id"] and command.extension == "image-segmentation"
    assert command.form["train_epochs"] == 2
    shown = client.get(f"/models/{body['id']}.json", headers=ADMIN)
    assert shown.status_code == 200 and shown.get_json()["name"] == "seg"


def test_generic_json_errors_name_each_field(client, bus_client):
    classification = add_job(bus_client, type="dataset", name="c")
    form = {"model_name": "", "dataset": classification.id, "lr_poly_power": "x"}
    response = client.post(
        "/models/images/generic.json", json={**form, "lr_policy": "poly"}, headers=ADMIN
    )
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert "model_name is required" in errors["model_name"][0]
    assert "not another extension" in errors["dataset"][0]
    assert errors["lr_poly_power"] == ["lr_poly_power 'x' is not a number"]
    assert client.post("/models/images/generic.json", data=form).status_code == 401


def test_generic_infer_one_checks_its_input_and_needs_a_view_service(client, bus_client):
    job = add_job(bus_client, type="model", name="seg", status=jobs.DONE)
    url = "/models/images/generic/infer_one.json"
    missing = client.post(url, data={"job_id": job.id}, headers=ADMIN)
    assert missing.status_code == 400 and "image_file is required" in str(missing.get_json())
    image = (io.BytesIO(b"\x89PNG"), "x.png")
    unknown = client.post(url, data={"job_id": "nope", "image_file": image}, headers=ADMIN)
    assert unknown.status_code == 404 and "'nope'" in unknown.get_json()["error"]
    image = (io.BytesIO(b"\x89PNG"), "x.png")
    alone = client.post(url, data={"job_id": job.id, "image_file": image}, headers=ADMIN)
    assert alone.status_code == 503 and "no view service" in alone.get_json()["error"]
