"""Model pages on a real nats-server: New Model, the model page, its partials, inference forms."""

from __future__ import annotations

import json
import re

import pytest

from digits import bus, events, jobs, subjects
from tests.gateway.conftest import add_job, stored_events

pytestmark = pytest.mark.timeout(180)

VALID = {
    "model_name": "lenet-1",
    "method": "standard",
    "standard_networks": "lenet",
    "train_epochs": "3",
    "batch_size": "16",
    "solver_type": "ADAM",
    "learning_rate": "0.002",
    "lr_policy": "step",
    "lr_step_size": "33",
    "lr_step_gamma": "0.1",
    "use_mean": "image",
    "shuffle": "true",
    "aug_flip": "fliplr",
    "random_seed": "7",
}


def dataset(bus_client, extension: str = "image-classification", **kw) -> jobs.Job:
    """A finished dataset job record."""
    fields = {"type": "dataset", "name": "shapes", "status": jobs.DONE, "extension": extension}
    return add_job(bus_client, **(fields | kw))


def model(bus_client, status: str = jobs.RUNNING, **kw) -> jobs.Job:
    """A model job record on a fresh dataset."""
    ds = dataset(bus_client)
    fields = {"type": "model", "name": "lenet", "status": status, "depends_on": [ds.id]}
    fields |= {"form": {"train_epochs": 4, "learning_rate": 0.01}, "owner": "admin"}
    return add_job(bus_client, **(fields | kw))


def publish(bus_client, event: events.Event) -> int:
    """Publish a fact as a service does; its stream sequence."""
    ack = bus_client.call(bus.publish_event(bus_client.nc.jetstream(), event))
    return ack.seq


def progress(job_id: str, epoch: float, loss: float, phase: str = "train") -> events.TrainProgress:
    """A TrainProgress event as the trainer publishes it."""
    metrics = {"loss": loss, "accuracy": 0.5} if phase == "train" else {"val_loss": loss}
    return events.TrainProgress(
        job_id=job_id,
        phase=phase,
        epoch=epoch,
        step=int(epoch * 10),
        metrics=metrics,
        learning_rate=0.01,
    )


def is_fragment(html: str) -> bool:
    """An htmx partial: no page layout around it."""
    return "<html" not in html and 'class="topbar"' not in html


def test_new_model_page_whole_and_fragment(browser, bus_client):
    ds = dataset(bus_client, name="digits-28")
    other = dataset(bus_client, extension="image-segmentation", name="sunny")
    page = browser.get(f"/models/images/classification/new?dataset={ds.id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html and 'id="model-form"' in html
    assert f'<option value="{ds.id}" selected>' in html and other.id not in html
    for name in ("standard_networks", "custom_network", "previous_networks", "lr_step_size"):
        assert f'name="{name}"' in html
    for name in ("aug_hsv_use", "early_stopping", "snapshot_interval", "select_gpus"):
        assert f'name="{name}"' in html
    assert 'name="csrf_token"' in html and 'action="/models/images/classification"' in html
    assert "<polyline" in html, "the learning-rate preview is drawn with the form"
    fragment = browser.get("/models/images/classification/new", htmx=True).get_data(as_text=True)
    assert is_fragment(fragment) and fragment.lstrip().startswith("<form")
    generic = browser.get("/models/images/generic/new").get_data(as_text=True)
    assert other.id in generic and ds.id not in generic
    assert 'action="/models/images/generic"' in generic


def test_pages_need_a_login(client, bus_client):
    job = model(bus_client)
    for url in ("/models/images/classification/new", f"/models/{job.id}"):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    response = client.get(f"/models/{job.id}/status", headers={"HX-Request": "true"})
    assert response.status_code == 401 and "/login" in response.headers["HX-Redirect"]


def test_create_publishes_model_create_and_redirects(browser, bus_client):
    ds = dataset(bus_client)
    response = browser.post("/models/images/classification", {**VALID, "dataset": ds.id})
    assert response.status_code == 303, response.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", job_id)
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.job_id == job_id and command.dataset_id == ds.id and command.owner == "admin"
    assert command.name == "lenet-1" and command.extension == "image-classification"
    form = command.form
    assert form["train_epochs"] == 3 and form["learning_rate"] == 0.002
    assert form["lr_policy"] == "step" and form["lr_step_size"] == "33"
    assert form["aug_flip"] == "fliplr" and form["shuffle"] is True
    assert "csrf_token" not in form and "custom_network" not in form
    # Until the scheduler stores the record, the page shows the job as submitted.
    page = browser.get(f"/models/{job_id}").get_data(as_text=True)
    assert (
        "lenet-1" in page and "Initialized" in page and "load[!window.digitsLive] delay:1s" in page
    )
    again = browser.post("/models/images/classification", {**VALID, "dataset": ds.id}, htmx=True)
    assert again.status_code == 204 and again.headers["HX-Redirect"].startswith("/models/")


def test_unchecked_shuffle_posts_false(browser, bus_client):
    ds = dataset(bus_client)
    data = {**VALID, "dataset": ds.id}
    data["shuffle"] = "false"  # what the hidden input sends when the checkbox is off
    assert browser.post("/models/images/classification", data).status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.form["shuffle"] is False


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", "fast", "learning_rate 'fast' is not a number"),
        ("lr_step_size", "x", "lr_step_size 'x' is not a number"),
        ("aug_rot", "500", "aug_rot must be in [0, 180], not 500"),
        ("train_epochs", "0", "train_epochs '0' is out of range"),
        ("solver_type", "LBFGS", "solver_type 'LBFGS' is not one of"),
        ("dataset", "20990101-000000-dead", "no dataset with id '20990101-000000-dead'"),
        ("model_name", "", "model_name is required"),
    ],
)
def test_bad_values_rerender_the_form_naming_them(browser, bus_client, field, value, message):
    ds = dataset(bus_client)
    data = {**VALID, "dataset": ds.id, field: value}
    response = browser.post("/models/images/classification", data)
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "<html" in html
    assert message in html.replace("&#39;", "'"), html
    assert f'id="{field}-error"' in html
    assert 'value="lenet-1"' in html or field == "model_name", "values are kept"
    fragment = browser.post("/models/images/classification", data, htmx=True)
    assert fragment.status_code == 400 and is_fragment(fragment.get_data(as_text=True))
    assert not stored_events(bus_client, subjects.CMD_MODEL_CREATE)


def test_custom_and_previous_networks_are_checked(browser, bus_client):
    ds = dataset(bus_client)
    data = {**VALID, "dataset": ds.id, "method": "custom", "custom_network": "{not json"}
    html = browser.post("/models/images/classification", data).get_data(as_text=True)
    assert "custom_network is not a Keras model JSON" in html
    trained = model(bus_client, status=jobs.DONE, extra={"snapshots": [1.0, 2.0]})
    data = {**VALID, "dataset": ds.id, "method": "previous", "previous_networks": trained.id}
    response = browser.post(
        "/models/images/classification", {**data, "previous_network_snapshot": "3"}
    )
    assert response.status_code == 400
    assert "is not one of model" in response.get_data(as_text=True)
    assert browser.post("/models/images/classification", data).status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.form["previous_networks"] == trained.id
    assert "standard_networks" not in command.form


def test_generic_form_wants_a_dataset_of_another_extension(browser, bus_client):
    classification = dataset(bus_client)
    response = browser.post("/models/images/generic", {**VALID, "dataset": classification.id})
    assert response.status_code == 400
    assert "not another extension" in response.get_data(as_text=True)
    other = dataset(bus_client, extension="image-segmentation")
    response = browser.post("/models/images/generic", {**VALID, "dataset": other.id})
    assert response.status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_MODEL_CREATE)
    assert command.extension == "image-segmentation"


def test_clone_prefills_the_form(browser, bus_client):
    source = model(bus_client, status=jobs.DONE, form={"train_epochs": 17, "solver_type": "ADAM"})
    html = browser.get(f"/models/images/classification/new?clone={source.id}").get_data(
        as_text=True
    )
    assert 'value="17"' in html and 'value="lenet (clone)"' in html
    assert f'<option value="{source.depends_on[0]}" selected>' in html
    assert '<option value="ADAM" selected>' in html


def test_lr_preview_draws_the_policy(browser):
    query = "lr_policy=step&learning_rate=0.1&lr_step_size=50&lr_step_gamma=0.5"
    response = browser.get(f"/models/lr_preview?{query}", htmx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and is_fragment(html)
    points = re.search(r'points="([^"]+)"', html).group(1).split()
    ys = [float(p.split(",")[1]) for p in points]
    # 0.1, halved at 50 % and again at 100 % of training (DIGITS's preview, 120 px high).
    assert ys[0] == ys[49] == 0.0 and ys[50] == pytest.approx(60.0) and ys[-1] == 90.0
    assert "0.025 at the end" in html
    page = browser.get(f"/models/lr_preview?{query}")
    assert "<html" in page.get_data(as_text=True)
    bad = browser.get("/models/lr_preview?lr_policy=exp&lr_exp_gamma=-1", htmx=True)
    assert bad.status_code == 400 and "gamma -1.0 must be &gt; 0" in bad.get_data(as_text=True)


def test_model_page_whole_and_status_fragment(browser, bus_client):
    job = model(bus_client, extra={"snapshots": [1.0]})
    publish(bus_client, progress(job.id, 1.5, 0.7))
    page = browser.get(f"/models/{job.id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html
    for marker in ('id="model-status"', 'id="training-graphs"', 'id="classify-one"'):
        assert marker in html
    assert 'id="classify-many"' in html and 'id="top-n"' in html and "uPlot" in html
    assert f'href="/datasets/{job.depends_on[0]}"' in html
    assert f'action="/jobs/{job.id}/actions/abort"' in html
    assert f'action="/jobs/{job.id}/actions/delete"' in html
    assert f'href="/models/{job.id}/download?epoch=1"' in html
    assert "epoch 1.5 of 4" in html
    fragment = browser.get(f"/models/{job.id}", htmx=True).get_data(as_text=True)
    assert is_fragment(fragment) and 'id="model-status"' in fragment
    assert 'id="training-graphs"' not in fragment
    status = browser.get(f"/models/{job.id}/status", htmx=True).get_data(as_text=True)
    assert is_fragment(status) and "load[!window.digitsLive] delay:1s" in status, (
        "polls while running"
    )
    assert "hx-swap-oob" not in status
    assert "<html" in browser.get(f"/models/{job.id}/status").get_data(as_text=True)


def test_status_stops_polling_when_the_job_ends(browser, bus_client):
    job = model(bus_client, status=jobs.DONE, extra={"snapshots": [1.0, 2.0]})
    status = browser.get(f"/models/{job.id}/status", htmx=True).get_data(as_text=True)
    assert "hx-trigger" not in status and "status-Done" in status
    # The last poll refreshes the snapshot menus of the forms out of band.
    assert status.count('hx-swap-oob="true"') == 4 and 'value="2">epoch 2<' in status


def test_unknown_model_is_404(browser, bus_client):
    ds = dataset(bus_client)
    for url in ("/models/20990101-000000-beef", f"/models/{ds.id}", f"/models/{ds.id}/status"):
        assert browser.get(url).status_code == 404
    assert browser.get("/models/20990101-000000-beef/progress.json").status_code == 404


def test_progress_json_returns_points_after_a_sequence(browser, bus_client):
    job = model(bus_client)
    empty = browser.get(f"/models/{job.id}/progress.json").get_json()
    assert empty["points"] == [] and empty["seq"] == 0 and not empty["done"]
    other = model(bus_client)
    publish(bus_client, progress(other.id, 0.5, 9.0))
    seqs = [publish(bus_client, progress(job.id, e, 2.0 - e)) for e in (0.25, 0.5, 0.75)]
    publish(bus_client, progress(job.id, 1.0, 1.1, phase="val"))
    body = browser.get(f"/models/{job.id}/progress.json?after=0").get_json()
    assert [p["epoch"] for p in body["points"]] == [0.25, 0.5, 0.75, 1.0]
    assert [p["phase"] for p in body["points"]][-1] == "val"
    assert body["points"][0]["metrics"] == {"loss": 1.75, "accuracy": 0.5}
    assert body["points"][0]["learning_rate"] == 0.01 and body["seq"] > seqs[-1]
    newer = browser.get(f"/models/{job.id}/progress.json?after={seqs[1]}").get_json()
    assert [p["epoch"] for p in newer["points"]] == [0.75, 1.0]
    same = browser.get(f"/models/{job.id}/progress.json?after={body['seq']}").get_json()
    assert same["points"] == [] and same["seq"] == body["seq"]
    bad = browser.get(f"/models/{job.id}/progress.json?after=x")
    assert bad.status_code == 400 and "after 'x'" in bad.get_json()["error"]
    done = model(bus_client, status=jobs.ERROR)
    assert browser.get(f"/models/{done.id}/progress.json").get_json()["done"] is True


def test_classify_forms_name_missing_input(browser, bus_client):
    job = model(bus_client, status=jobs.DONE, extra={"snapshots": [1.0]})
    one = browser.post(f"/models/{job.id}/classify_one", htmx=True)
    html = one.get_data(as_text=True)
    assert one.status_code == 400 and is_fragment(html)
    assert "image_file is required" in html
    many = browser.post(f"/models/{job.id}/classify_many", {"num_test_images": "0"}, htmx=True)
    assert many.status_code == 400 and "num_test_images &#39;0&#39; is out of range" in (
        many.get_data(as_text=True)
    )
    top = browser.post(f"/models/{job.id}/top_n", {}, htmx=True)
    assert top.status_code == 400 and "give image_list" in top.get_data(as_text=True)
    page = browser.post(f"/models/{job.id}/top_n", {})
    assert page.status_code == 400 and "<html" in page.get_data(as_text=True)


def test_classify_without_a_view_service_says_so(browser, bus_client):
    import io

    job = model(bus_client, status=jobs.DONE, extra={"snapshots": [1.0]})
    data = {"image_file": (io.BytesIO(b"\x89PNG fake"), "x.png")}
    one = browser.post(f"/models/{job.id}/classify_one", data, htmx=True)
    assert one.status_code == 503 and "no view service" in one.get_data(as_text=True)


@pytest.mark.timeout(180)
def test_train_watch_classify_and_download_through_the_pages(
    nats_server, stack, tmp_path, monkeypatch
):
    """Real ingest, train and view services: a LeNet made, watched and used through the pages."""
    import io
    import tarfile
    import time
    from concurrent.futures import ThreadPoolExecutor

    from digits.config import Settings
    from digits.download_data import synthetic
    from gateway.app import create_app
    from gateway.context import bus_of
    from tests.gateway.conftest import ADMIN, ADMIN_PASSWORD, Browser
    from tests.waiting import wait_for_sync

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(stack, ("ingest_service", "train_service", "view_service")))
    synthetic.generate(tmp_path / "shapes", classes=4, per_class=40, size=28, seed=1)
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
        client = app.test_client()
        browser = Browser(client)
        assert browser.login().status_code == 302
        form = {"dataset_name": "shapes", "method": "folder", "folder_pct_val": "25"}
        form |= {"folder_train": str(tmp_path / "shapes" / "train"), "resize_channels": "1"}
        form |= {"resize_width": "28", "resize_height": "28"}
        created = client.post("/datasets/images/classification.json", data=form, headers=ADMIN)
        dataset_id = created.get_json()["id"]

        def dataset_status() -> str | None:
            found = client.get(f"/datasets/{dataset_id}.json", headers=ADMIN).get_json()
            return found["status"] if found.get("status") in ("Done", "Error") else None

        assert wait_for_sync(dataset_status, timeout=90, interval=0.2) == "Done"
        model = {**VALID, "dataset": dataset_id, "train_epochs": "4", "lr_policy": "fixed"}
        model |= {"aug_flip": "none", "snapshot_interval": "2"}
        response = browser.post("/models/images/classification", model)
        assert response.status_code == 303, response.get_data(as_text=True)
        job_id = response.headers["Location"].rsplit("/", 1)[1]

        seen: list[tuple[str, int]] = []  # (status, graph points) while the job runs
        seq, points = 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = browser.get(f"/models/{job_id}/status", htmx=True).get_data(as_text=True)
            word = re.search(r'data-status="(\w+)"', status).group(1)
            body = browser.get(f"/models/{job_id}/progress.json?after={seq}").get_json()
            seq, points = body["seq"], points + len(body["points"])
            seen.append((word, points))
            if "hx-trigger" not in status:
                break
            time.sleep(0.2)
        assert seen[-1][0] == "Done", seen
        assert body["done"] is True
        running = {n for word, n in seen if word == "Running" and n > 0}
        assert len(running) >= 2, f"the graphs grew while training: {seen}"
        assert points >= 4 * 4, "several points per epoch"

        correct = 0
        for label in ("0", "1", "2", "3"):
            image = sorted((tmp_path / "shapes" / "test" / label).iterdir())[0]
            data = {"image_file": (io.BytesIO(image.read_bytes()), image.name)}
            one = browser.post(f"/models/{job_id}/classify_one", data, htmx=True)
            html = one.get_data(as_text=True)
            assert one.status_code == 200 and "<html" not in html, html
            top = re.search(r'<tr class="top"><td class="label">([^<]+)</td>', html).group(1)
            correct += top == label
        assert correct >= 3, "the trained LeNet names the held-out shapes"

        lines = [
            f"test/{p.parent.name}/{p.name} {p.parent.name}"
            for p in sorted((tmp_path / "shapes" / "test").glob("*/*.png"))
        ]
        listing = (io.BytesIO("\n".join(lines).encode()), "test.txt")
        data = {"image_list": listing, "image_folder": str(tmp_path / "shapes")}
        many = browser.post(f"/models/{job_id}/classify_many", data, htmx=True)
        html = many.get_data(as_text=True)
        assert many.status_code == 200 and "Top-1 accuracy" in html and "Confusion matrix" in html

        archive = browser.get(f"/models/{job_id}/download")
        assert archive.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(archive.get_data()), mode="r:gz") as tar:
            names = tar.getnames()
            info = json.loads(tar.extractfile("info.json").read())
        assert "epoch-4.keras" in names and "labels.txt" in names
        assert info["job_id"] == job_id and info["labels"] == ["0", "1", "2", "3"]
    finally:
        bus_of(app).close()
