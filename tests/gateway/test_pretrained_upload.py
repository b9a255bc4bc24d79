"""A pretrained model uploaded on the New Model page as a downloaded archive (.tar.gz)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from html import unescape

import pytest

from digits import jobs, subjects
from tests.gateway.conftest import ADMIN, add_job, basic, stored_events

pytestmark = pytest.mark.timeout(180)

FORM = {
    "model_name": "tuned",
    "method": "pretrained",
    "train_epochs": "2",
    "batch_size": "8",
    "solver_type": "ADAM",
    "learning_rate": "0.001",
    "lr_policy": "fixed",
}


def keras_file() -> bytes:
    """Bytes shaped like a .keras file (a zip with the model's config)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential"}))
    return buf.getvalue()


def archive(members: dict[str, bytes], extra_dir: str = "", link: str = "") -> bytes:
    """A .tar.gz of ``members`` (name -> bytes), as /models/<id>/download streams one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra_dir:
            info = tarfile.TarInfo(extra_dir)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


SAVED_MODEL = {
    "saved_model/saved_model.pb": b"graph",
    "saved_model/variables/variables.index": b"index",
    "saved_model/variables/variables.data-00000-of-00001": b"\0" * 100,
}


def download_format(**overrides: bytes) -> dict[str, bytes]:
    """The members of a downloaded LeNet archive."""
    info = {"job_id": "20260101-000000-aaaa", "task": "classification", "labels": ["a", "b"]}
    members = {
        "info.json": json.dumps(info).encode(),
        "labels.txt": b"a\nb",
        "network.json": b'{"class_name": "Functional"}',
        "epoch-2.keras": keras_file(),
        "mean.npy": b"\x93NUMPY fake",
    }
    return {**members, **overrides}


def dataset(bus_client, extension: str = "image-classification") -> jobs.Job:
    """A Done dataset record."""
    fields = {"type": "dataset", "name": "shapes", "status": jobs.DONE, "extension": extension}
    return add_job(bus_client, **fields)


def stored_uploads(app, bus_client) -> list[str]:
    """The keys under uploads/pretrained/ in the gateway's artifact store."""
    from gateway.context import artifact_store

    with app.app_context():
        store = artifact_store()
    return bus_client.call(store.list("uploads/pretrained/"))


def post(browser, data: bytes, filename: str = "lenet_epoch_2.tar.gz", **fields: str):
    """POST the New Model form with an uploaded archive."""
    upload = {"pretrained_archive_file": (io.BytesIO(data), filename)}
    url = "/models/images/generic" if fields.pop("generic", "") else "/models/images/classification"
    return browser.post(url, {**FORM, **fields, **upload}, content_type="multipart/form-data")


def test_the_form_offers_the_upload(browser):
    html = browser.get("/models/images/classification/new").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html and 'name="pretrained_archive_file"' in html


def test_an_uploaded_archive_is_stored_and_named_by_model_create(app, browser, bus_client):
    ds = dataset(bus_client)
    data = archive(download_format())
    response = post(browser, data, dataset=ds.id, previous_network_snapshot="2")
    assert response.status_code == 303, response.get_data(as_text=True)
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    key = command.form["pretrained_archive"]
    assert key.startswith("uploads/pretrained/admin/") and key.endswith(".tar.gz")
    assert "previous_networks" not in command.form and command.form["method"] == "pretrained"
    assert command.form["previous_network_snapshot"] == 2.0
    assert response.headers["Location"].endswith(command.job_id)
    assert stored_uploads(app, bus_client) == [key]
    from gateway.context import artifact_store

    with app.app_context():
        store = artifact_store()
    assert bus_client.call(store.get(key)) == data, "the archive as uploaded"


def test_an_archive_with_the_saved_model_export_is_taken(app, browser, bus_client):
    ds = dataset(bus_client)
    data = archive(download_format(**SAVED_MODEL), extra_dir="saved_model/assets")
    response = post(browser, data, dataset=ds.id)
    assert response.status_code == 303, unescape(response.get_data(as_text=True))[-3000:]
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert stored_uploads(app, bus_client) == [command.form["pretrained_archive"]]


def test_the_generic_form_takes_an_archive_too(app, browser, bus_client):
    ds = dataset(bus_client, "image-segmentation")
    response = post(browser, archive(download_format()), dataset=ds.id, generic="1")
    assert response.status_code == 303, response.get_data(as_text=True)
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.extension == "image-segmentation"
    assert command.form["pretrained_archive"] in stored_uploads(app, bus_client)


BAD = [
    ("model.zip", archive(download_format()), "'model.zip' is not a .tar.gz"),
    ("m.tar.gz", b"plain text, not gzip", "not a gzip-compressed tar archive"),
    ("m.tar.gz", archive(download_format(**{"evil.sh": b"rm"})), "unexpected members ['evil.sh']"),
    ("m.tar.gz", archive({"info.json": b"{}"}), "it holds no snapshot (epoch-N.keras)"),
    ("m.tar.gz", archive(download_format(**{"info.json": b"[1"})), "info.json is not JSON"),
    ("m.tar.gz", archive({"epoch-1.keras": keras_file()}), "it has no info.json"),
    (
        "m.tar.gz",
        archive(download_format(**{"epoch-3.keras": b"not a zip"})),
        "epoch-3.keras is not a Keras model file",
    ),
    ("m.tgz", archive(download_format(), extra_dir="sub"), "only plain files at the top level"),
    ("m.tgz", archive(download_format(**{"../x.keras": b"PK"})), "only plain files at the top"),
    (
        "m.tgz",
        archive(download_format(**{"saved_model/../../x.pb": b"x"})),
        "not ['saved_model/../../x.pb']",
    ),
    ("m.tgz", archive(download_format(), link="saved_model/v.pb"), "not ['saved_model/v.pb']"),
    ("m.tgz", archive(download_format(**{"other/x.pb": b"x"})), "not ['other/x.pb']"),
]


@pytest.mark.parametrize(("filename", "data", "message"), BAD, ids=[m for _f, _d, m in BAD])
def test_a_bad_archive_is_named_and_nothing_is_kept(
    app, browser, bus_client, filename, data, message
):
    ds = dataset(bus_client)
    response = post(browser, data, filename, dataset=ds.id)
    html = unescape(response.get_data(as_text=True))
    assert response.status_code == 400
    assert f"pretrained_archive_file '{filename}'" in html and message in html, html[-3000:]
    assert 'id="pretrained_archive_file-error"' in html
    assert stored_events(bus_client, subjects.CMD_MODEL_CREATE) == []
    assert stored_uploads(app, bus_client) == []


def test_the_size_limit_is_configurable(app, browser, bus_client):
    app.config["PRETRAINED_MAX_BYTES"] = 1000
    ds = dataset(bus_client)
    data = archive(download_format(**{"epoch-2.keras": keras_file() + os.urandom(5000)}))
    assert len(data) > 1000
    response = post(browser, data, "big.tar.gz", dataset=ds.id)
    assert response.status_code == 400
    assert "pretrained_archive_file 'big.tar.gz' exceeds 1000 bytes" in unescape(response.text)
    assert stored_uploads(app, bus_client) == []


def test_an_archive_and_a_previous_model_are_not_both_taken(app, browser, bus_client):
    ds = dataset(bus_client)
    previous = add_job(
        bus_client, type="model", name="old", status=jobs.DONE, extra={"snapshots": [1.0]}
    )
    response = post(
        browser, archive(download_format()), dataset=ds.id, previous_networks=previous.id
    )
    assert response.status_code == 400
    assert f"give previous_networks ('{previous.id}') or pretrained_archive_file, not both" in (
        unescape(response.text)
    )
    assert stored_uploads(app, bus_client) == []
    # Without either, the form still asks for a model.
    bare = browser.post("/models/images/classification", {**FORM, "dataset": ds.id})
    assert bare.status_code == 400 and "previous_networks is required" in unescape(bare.text)


def test_other_methods_ignore_the_upload(app, browser, bus_client):
    ds = dataset(bus_client)
    response = post(browser, archive(download_format()), dataset=ds.id, method="standard")
    assert response.status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert "pretrained_archive" not in command.form and stored_uploads(app, bus_client) == []


def test_a_posted_key_is_not_taken_from_the_form(client, browser, bus_client):
    ds = dataset(bus_client)
    forged = {**FORM, "dataset": ds.id, "pretrained_archive": "uploads/pretrained/x.tar.gz"}
    page = browser.post("/models/images/classification", forged)
    assert page.status_code == 400 and "previous_networks is required" in unescape(page.text)
    body = {**FORM, "dataset": dataset(bus_client, "image-segmentation").id}
    api = client.post(
        "/models/images/generic.json",
        json={**body, "pretrained_archive": "../secrets"},
        headers=ADMIN,
    )
    assert api.status_code == 400
    assert "pretrained_archive '../secrets' is not one of your uploaded archives" in str(
        api.get_json()
    )
    assert stored_events(bus_client, subjects.CMD_MODEL_CREATE) == []


def test_an_archive_key_is_taken_only_from_its_owner(app, client, browser, bus_client, accounts):
    # An upload's key names its owner; the JSON API takes a key only under the caller's own.
    accounts.create_user("mallory", "pw-mallory-1")
    ds = dataset(bus_client)
    assert post(browser, archive(download_format()), dataset=ds.id).status_code == 303
    [made] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    key = made.form["pretrained_archive"]
    body = {**FORM, "dataset": dataset(bus_client, "image-segmentation").id, "method": "pretrained"}
    for forged in (key, "uploads/pretrained/upload.tar.gz", "uploads/pretrained/mallory/x.tar.gz"):
        refused = client.post(
            "/models/images/generic.json",
            json={**body, "pretrained_archive": forged},
            headers=basic("mallory", "pw-mallory-1"),
        )
        assert refused.status_code == 400, forged
        assert f"pretrained_archive {forged!r} is not one of your uploaded archives" in str(
            refused.get_json()
        ), refused.get_json()
        assert "uploads/pretrained/mallory/<id>.tar.gz" in str(refused.get_json())
    own = client.post(
        "/models/images/generic.json", json={**body, "pretrained_archive": key}, headers=ADMIN
    )
    assert own.status_code == 200, own.get_json()
    assert [
        e.form["pretrained_archive"] for e in stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    ] == [key, key]


@pytest.mark.timeout(180)
def test_fine_tune_from_an_uploaded_download_of_a_trained_lenet(
    nats_server, stack, tmp_path, monkeypatch
):
    """Real services: train a LeNet, download it, upload the archive as pretrained, reach Done."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from werkzeug.datastructures import FileStorage

    from digits.config import Settings
    from digits.download_data import synthetic
    from gateway.app import create_app
    from gateway.context import bus_of
    from tests.gateway.conftest import ADMIN_PASSWORD, Browser
    from tests.waiting import wait_for_sync

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stack, ("ingest_service", "train_service")))
    synthetic.generate(tmp_path / "shapes", classes=3, per_class=16, size=28, seed=2)
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    settings = Settings.from_env(
        {
            "DIGITS_NATS_URL": nats_server.url,
            "DIGITS_DATA_DIR": str(tmp_path / "gateway"),
            "DIGITS_STORE_URL": (tmp_path / "store").as_uri(),
        }
    )
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        browser = Browser(app.test_client())
        assert browser.login().status_code == 302
        form = {"dataset_name": "shapes", "method": "folder", "folder_pct_val": "25"}
        form |= {"folder_train": str(tmp_path / "shapes" / "train"), "resize_channels": "1"}
        form |= {"resize_width": "28", "resize_height": "28"}
        created = browser.client.post(
            "/datasets/images/classification.json", data=form, headers=ADMIN
        )
        dataset_id = created.get_json()["id"]

        def status(job_id: str) -> str | None:
            found = browser.client.get(f"/jobs/{job_id}/status", headers=ADMIN).get_json()
            return found["status"] if found.get("status") in ("Done", "Error") else None

        assert wait_for_sync(lambda: status(dataset_id), timeout=60, interval=0.3) == "Done"

        def train(**fields: object) -> str:
            model = {**FORM, "dataset": dataset_id, "train_epochs": "1", "batch_size": "8"}
            model |= {"method": "standard", "standard_networks": "lenet", "model_name": "base"}
            response = post_fields(browser, {**model, **fields})
            assert response.status_code == 303, unescape(response.get_data(as_text=True))[-3000:]
            job_id = response.headers["Location"].rsplit("/", 1)[1]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (done := status(job_id)) is None:
                time.sleep(0.3)
            assert done == "Done", browser.client.get(f"/models/{job_id}.json", headers=ADMIN).text
            return job_id

        base = train()
        download = browser.get(f"/models/{base}/download")
        assert download.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(download.get_data()), mode="r:gz") as tar:
            names = sorted(tar.getnames())
        assert "saved_model/saved_model.pb" in names and "epoch-1.keras" in names, names
        as_zip = browser.get(f"/models/{base}/download.zip")
        with zipfile.ZipFile(io.BytesIO(as_zip.get_data())) as z:
            assert sorted(z.namelist()) == names and z.testzip() is None
        upload = FileStorage(io.BytesIO(download.get_data()), f"{base}_epoch_1.tar.gz")
        tuned = train(method="pretrained", model_name="tuned", pretrained_archive_file=upload)
        [_, command] = stored_events(bus_of(app), subjects.CMD_MODEL_CREATE)
        assert command.job_id == tuned
        assert command.form["pretrained_archive"].startswith("uploads/pretrained/")
        assert "previous_networks" not in command.form
        tuned_archive = browser.get(f"/models/{tuned}/download")
        with tarfile.open(fileobj=io.BytesIO(tuned_archive.get_data()), mode="r:gz") as tar:
            info = json.loads(tar.extractfile("info.json").read())
        started = info["started_from"]
        assert started["archive"] == command.form["pretrained_archive"], info
        assert started["snapshot"] == "epoch-1.keras" and not started["replaced_head"]
        # The job record names its upload; deleting the job removes it (and the job's files).
        key, client = command.form["pretrained_archive"], bus_of(app)
        assert client.call(client.jobs.get(tuned)).uploads == [key]
        assert (tmp_path / "store" / key).is_file()
        assert browser.client.delete(f"/jobs/{tuned}", headers=ADMIN).status_code == 200
        wait_for_sync(lambda: not (tmp_path / "store" / key).exists(), timeout=30)
        assert not (tmp_path / "store" / "models" / tuned).exists()
    finally:
        bus_of(app).close()


def post_fields(browser, fields: dict) -> object:
    """POST the New Model form, multipart (it may carry the archive), encoded in memory.

    The test client would spool a big body to a temporary file it never closes.
    """
    from werkzeug.test import stream_encode_multipart

    body, length, boundary = stream_encode_multipart(
        {"csrf_token": browser.csrf, **fields}, use_tempfile=False
    )
    return browser.client.post(
        "/models/images/classification",
        data=body.read(),
        content_type=f"multipart/form-data; boundary={boundary}",
    )
