"""The dataset pages against the real ingest service: form in, live status, results out."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from digits.config import Settings
from gateway.app import create_app
from gateway.context import bus_of
from tests.gateway.conftest import ADMIN_PASSWORD, SECRET_KEY, Browser
from tests.integration.test_ingest import make_folder
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def live(nats_server, tmp_path, monkeypatch, stack):
    """The ingest service and a gateway sharing its store and data roots; a logged-in browser."""
    stack("ingest_service", DIGITS_SHARD_SIZE="40", DIGITS_SECRET_KEY=SECRET_KEY)
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    settings = Settings.from_env(
        {
            "DIGITS_NATS_URL": nats_server.url,
            "DIGITS_DATA_DIR": str(tmp_path / "gateway"),
            "DIGITS_STORE_URL": (tmp_path / "store").as_uri(),
            "DIGITS_DATA_ROOTS": str(tmp_path),
            "DIGITS_SECRET_KEY": SECRET_KEY,
        }
    )
    app = create_app({"SETTINGS": settings, "TESTING": True})
    browser = Browser(app.test_client())
    assert browser.login().status_code == 302
    try:
        yield browser
    finally:
        bus_of(app).close()


def test_a_folder_dataset_through_the_form_to_its_gallery(live, tmp_path):
    make_folder(tmp_path / "images", classes=3, per_class=30, size=12)
    form = {
        "dataset_name": "three-classes",
        "method": "folder",
        "folder_train": str(tmp_path / "images"),
        "folder_pct_val": "20",
        "resize_width": "16",
        "resize_height": "12",
        "resize_channels": "1",
        "encoding": "png",
    }
    # A folder that does not exist is named in the re-rendered form: the gateway sees the roots.
    missing = live.post("/datasets/images/classification", {**form, "folder_train": "/nowhere"})
    assert missing.status_code == 400 and "/nowhere" in missing.text
    response = live.post("/datasets/images/classification", form)
    assert response.status_code == 303, response.text
    url = response.headers["Location"]
    job_id = url.rsplit("/", 1)[-1]

    def finished() -> str | None:
        fragment = live.get(f"{url}/status", htmx=True).get_data(as_text=True)
        return None if "hx-trigger" in fragment else fragment

    fragment = wait_for_sync(finished, timeout=120, interval=0.25)
    assert "status-Done" in fragment, fragment
    assert "Create DB (train)" in fragment and "Create DB (val)" in fragment
    page = live.get(url).get_data(as_text=True)
    counts = dict(re.findall(r'data-stage="(\w+)"><td>\w+</td><td class="count">(\d+)<', page))
    assert counts == {"train_db": "72", "val_db": "18"}
    assert page.count('class="bar"') == 6  # 3 labels x 2 stages
    assert 'data-label="class02"' in page
    mean = live.get(f"/datasets/{job_id}/mean.png")
    assert mean.status_code == 200 and Image.open(io.BytesIO(mean.data)).size == (16, 12)
    gallery = live.get(f"/datasets/{job_id}/explore?stage=train_db&label=2").get_data(as_text=True)
    thumbs = re.findall(r'src="data:image/png;base64,([^"]+)" alt="class02"', gallery)
    assert len(thumbs) == 24 and "24 images labelled class02 in train_db" in gallery
    image = Image.open(io.BytesIO(base64.b64decode(thumbs[0])))
    assert image.size == (16, 12) and image.mode == "L"
    # Class 2's pictures are 40..49 bright (see make_folder): the gallery shows the real samples.
    assert 40 <= np.asarray(image).mean() <= 50
    preview = live.post(
        "/datasets/images/resize",
        {"folder_train": form["folder_train"], "resize_width": "16", "resize_height": "12"},
    )
    assert preview.mimetype == "image/png"
    assert Image.open(io.BytesIO(preview.data)).size == (16, 12)
