"""Dataset pages: the new-dataset form, clone, the live dataset page, explore, mean, preview."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digits import jobs, subjects
from digits.dataset import Manifest, ShardInfo, ShardWriter, StageInfo, mean_png_bytes
from gateway.pages.jobdata import POLL
from tests.gateway.conftest import add_job, stored_events

FORM = {
    "dataset_name": "digits",
    "group_name": "mnist",
    "method": "folder",
    "folder_train": "/data/train",
    "folder_pct_val": "25",
    "resize_width": "28",
    "resize_height": "28",
    "resize_channels": "1",
    "resize_mode": "crop",
    "encoding": "png",
}


def png(width: int, height: int, color=(200, 30, 30)) -> bytes:
    """A small solid RGB PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def finished_dataset(bus_client, root, **fields) -> jobs.Job:
    """A Done dataset job whose files (2 labels, train 6 + val 2, mean) are really in ``root``."""
    job_id = jobs.new_job_id()
    base = root / "datasets" / job_id
    counts = {"train_db": [4, 2], "val_db": [1, 1]}
    stages = {}
    for stage, per_label in counts.items():
        with ShardWriter(base / stage / "shard-00000.lmdb") as writer:
            for label, n in enumerate(per_label):
                for _ in range(n):
                    writer.put(np.full((6, 8, 1), 40 + 160 * label, np.uint8), label)
        stages[stage] = StageInfo(
            shards=[ShardInfo(key=f"{stage}/shard-00000.lmdb", count=sum(per_label))],
            count=sum(per_label),
            histogram={"cat": per_label[0], "dog": per_label[1]},
        )
    (base / "mean.png").write_bytes(mean_png_bytes(np.full((6, 8, 1), 93.0)))
    manifest = Manifest(
        job_id=job_id,
        labels=["cat", "dog"],
        feature_shape=[6, 8, 1],
        stages=stages,
        mean={"png": "mean.png"},
    )
    (base / "manifest.json").write_bytes(manifest.to_json())
    extra = {"manifest_url": (base / "manifest.json").as_uri(), "labels": ["cat", "dog"]}
    fields = {"name": "pets", "owner": "admin", "status": jobs.DONE, "extra": extra, **fields}
    return add_job(bus_client, id=job_id, type="dataset", form=FORM, **fields)


def test_new_form_page_and_fragment(browser):
    page = browser.get("/datasets/images/classification/new").get_data(as_text=True)
    assert "<html" in page and "New Image Classification Dataset" in page
    for tab in ("Use Image Folder", "Use Text Files", "Use S3"):
        assert tab in page
    for field in ("folder_train", "textfile_train_images", "s3_bucket", "resize_mode"):
        assert f'name="{field}"' in page
    assert 'action="/datasets/images/classification"' in page and 'method="post"' in page
    assert 'hx-post="/datasets/images/resize"' in page and 'name="csrf_token"' in page
    fragment = browser.get("/datasets/images/classification/new", htmx=True).text
    assert "<html" not in fragment and fragment.lstrip().startswith('<form id="dataset-form"')


def test_create_publishes_dataset_create_and_redirects_to_the_dataset(browser, bus_client):
    response = browser.post("/datasets/images/classification", FORM)
    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.job_id == job_id and command.owner == "admin" and command.group == "mnist"
    assert command.form["folder_train"] == "/data/train" and command.form["resize_width"] == 28
    assert "csrf_token" not in command.form and "dataset_name" not in command.form
    # Until the ingest service stores it, the page shows it submitted, polling its status.
    page = browser.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert "digits" in page and f'hx-get="/datasets/{job_id}/status"' in page
    htmx = browser.post("/datasets/images/classification", FORM, htmx=True)
    assert htmx.status_code == 200 and htmx.headers["HX-Redirect"].startswith("/datasets/")


def test_errors_rerender_the_form_with_the_values_but_not_the_secrets(browser, bus_client):
    bad = {
        **FORM,
        "method": "s3",
        "resize_width": "wide",
        "s3_bucket": "",
        "s3_path": "train/",
        "s3_accesskey": "AKIAEXAMPLE",
        "s3_secretkey": "very-secret",
    }
    response = browser.post("/datasets/images/classification", bad)
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "resize_width &#39;wide&#39; is not an integer" in body
    assert "s3_bucket is required" in body
    assert 'value="train/"' in body and 'value="wide"' in body and 'value="digits"' in body
    assert "very-secret" not in body and "AKIAEXAMPLE" not in body
    assert 'id="method-s3" checked' in body
    fragment = browser.post("/datasets/images/classification", bad, htmx=True)
    assert fragment.status_code == 400 and "<html" not in fragment.text
    assert stored_events(bus_client, subjects.CMD_DATASET_CREATE) == []


def test_textfile_uploads_travel_as_text(browser, bus_client):
    form = {
        "dataset_name": "lists",
        "method": "textfile",
        "textfile_train_images": (io.BytesIO(b"a.png 0\nb.png 1\n"), "train.txt"),
        "textfile_labels_file": (io.BytesIO(b"cat\ndog\n"), "labels.txt"),
    }
    response = browser.post("/datasets/images/classification", form)
    assert response.status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.form["textfile_train_images"] == "a.png 0\nb.png 1\n"
    assert command.form["textfile_labels_file"] == "cat\ndog\n"


def test_clone_prefills_the_form_and_reuses_sealed_keys_without_showing_them(browser, bus_client):
    form = {**FORM, "method": "s3", "s3_bucket": "images", "s3_path": "train"}
    keys = {"s3_accesskey": "AKIAEXAMPLE", "s3_secretkey": "very-secret"}
    browser.post("/datasets/images/classification", {**form, **keys})
    [first] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert first.form["secret_ref"].startswith("secret:")
    job = add_job(
        bus_client, id=first.job_id, type="dataset", name="digits", owner="admin", form=first.form
    )
    page = browser.get(f"/datasets/{job.id}/clone").get_data(as_text=True)
    assert "<html" in page and "clone of" in page and 'value="images"' in page
    assert 'id="method-s3" checked' in page and 'value="28"' in page
    assert "very-secret" not in page and "secret:" not in page
    assert 'name="s3_secretkey" value=""' in page
    response = browser.post("/datasets/images/classification", {**form, "clone_of": job.id})
    assert response.status_code == 303
    second = stored_events(bus_client, subjects.CMD_DATASET_CREATE)[-1]
    assert second.form["secret_ref"] == first.form["secret_ref"] and "clone_of" not in second.form


def test_dataset_page_polls_while_running_and_shows_stages(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="live", owner="admin", form=FORM)
    store = bus_client.jobs
    bus_client.call(store.set_status(job.id, jobs.RUNNING))
    bus_client.call(store.update_stage(job.id, "Create DB (train)", status="R", progress=0.25))
    page = browser.get(f"/datasets/{job.id}").get_data(as_text=True)
    assert "<html" in page and 'id="job-actions"' in page and "Models using this dataset" in page
    fragment = browser.get(f"/datasets/{job.id}/status", htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and fragment.lstrip().startswith('<section id="dataset-status"')
    assert f'hx-trigger="{POLL}"' in fragment and "Create DB (train)" in fragment
    assert 'value="25"' in fragment and "UTC" in fragment and "Running" in fragment
    bus_client.call(store.update_stage(job.id, "Create DB (train)", status="E", progress=0.5))
    bus_client.call(store.set_status(job.id, jobs.ERROR, "disk full"))
    ended = browser.get(f"/datasets/{job.id}/status", htmx=True).get_data(as_text=True)
    assert "hx-trigger" not in ended and "disk full" in ended and "Error" in ended
    # The last poll swaps the actions out of band: a finished job offers no Abort.
    assert 'id="job-actions" class="card job-actions" hx-swap-oob="true"' in ended
    assert "actions/abort" not in ended and "actions/delete" in ended
    assert "actions/abort" in page and "actions/abort" not in fragment  # polls carry no actions
    assert "<html" in browser.get(f"/datasets/{job.id}/status").text


def test_finished_dataset_shows_counts_histogram_mean_and_models(browser, bus_client, tmp_path):
    job = finished_dataset(bus_client, tmp_path / "store")
    model = add_job(bus_client, type="model", name="lenet-pets", depends_on=[job.id])
    page = browser.get(f"/datasets/{job.id}").get_data(as_text=True)
    assert f'hx-get="/datasets/{job.id}/status"' not in page  # done: nothing polls
    assert '<td class="count">6</td>' in page and '<td class="count">2</td>' in page
    assert 'data-label="cat"' in page and "width: 100.0%" in page and "width: 50.0%" in page
    assert f'src="/datasets/{job.id}/mean.png"' in page and f"/models/{model.id}" in page
    mean = browser.get(f"/datasets/{job.id}/mean.png")
    assert mean.mimetype == "image/png"
    assert Image.open(io.BytesIO(mean.data)).size == (8, 6)


def test_explore_pages_through_one_label(browser, bus_client, tmp_path):
    job = finished_dataset(bus_client, tmp_path / "store")
    page = browser.get(f"/datasets/{job.id}/explore?stage=train_db").get_data(as_text=True)
    assert "<html" in page and page.count("data:image/png;base64,") == 6
    dogs = browser.get(f"/datasets/{job.id}/explore?stage=train_db&label=1", htmx=True).text
    assert "<html" not in dogs and dogs.count('alt="dog"') == 2 and 'alt="cat"' not in dogs
    assert "2 images labelled dog in train_db" in dogs
    val = browser.get(f"/datasets/{job.id}/explore?stage=val_db&label=0", htmx=True).text
    assert val.count("data:image/png") == 1
    missing = browser.get(f"/datasets/{job.id}/explore?stage=test_db")
    assert missing.status_code == 404
    assert browser.get(f"/datasets/{job.id}/explore?label=7").status_code == 400
    assert browser.get(f"/datasets/{job.id}/explore?page=9").status_code == 400


def test_explore_and_mean_of_an_unfinished_dataset_are_404(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="early", owner="admin")
    assert browser.get(f"/datasets/{job.id}/explore").status_code == 404
    assert browser.get(f"/datasets/{job.id}/mean.png").status_code == 404
    assert browser.get("/datasets/20260101-000000-abcd").status_code == 404


def test_resize_preview_of_an_upload(browser):
    form = {"resize_width": "20", "resize_height": "10", "resize_channels": "1"}
    form |= {"resize_mode": "fill", "preview_image": (io.BytesIO(png(40, 40)), "x.png")}
    response = browser.post("/datasets/images/resize", form)
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.size == (20, 10) and image.mode == "L"
    form["preview_image"] = (io.BytesIO(png(40, 40)), "x.png")
    fragment = browser.post("/datasets/images/resize", form, htmx=True).text
    assert fragment.startswith('<img class="resize-preview" src="data:image/png;base64,')


def test_resize_preview_errors_name_the_value(browser):
    bad = browser.post("/datasets/images/resize", {"resize_mode": "stretch"}, htmx=True)
    assert bad.status_code == 400 and "resize_mode &#39;stretch&#39; is not one of" in bad.text
    outside = browser.get("/datasets/images/resize?preview_path=/etc/passwd")
    assert outside.status_code == 400 and "/etc/passwd" in outside.text
    nothing = browser.post("/datasets/images/resize", {}, htmx=True)
    assert nothing.status_code == 400 and "give an image" in nothing.text


@pytest.mark.parametrize("url", ["/datasets/images/classification/new", "/datasets/x/explore"])
def test_dataset_pages_need_a_login(client, url):
    assert client.get(url).status_code == 302
