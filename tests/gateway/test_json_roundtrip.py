"""A DIGITS-style script using only the JSON API does the round trip.

Real ingest, train and view services on the test's nats-server; the gateway through Flask's test
client: create a dataset from a folder, train a LeNet on it, classify a held-out image.
"""

from __future__ import annotations

import io
import time

import pytest

from digits.download_data import synthetic
from tests.gateway.conftest import ADMIN
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(300)


def finished(client, path: str, timeout: float) -> dict:
    """Poll a job's JSON until it is Done, Error or Aborted."""

    def check() -> dict | None:
        response = client.get(path, headers=ADMIN)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        return body if body["status"] in ("Done", "Error", "Aborted") else None

    return wait_for_sync(check, timeout=timeout, interval=0.5)


def test_a_digits_style_script_does_the_round_trip(client, stack, tmp_path):
    started = time.monotonic()
    services = [stack(m, wait=False) for m in ("ingest_service", "train_service", "view_service")]
    synthetic.generate(tmp_path / "synthetic", classes=10, per_class=100, size=28, seed=1)
    for service in services:
        service.wait_healthy(60)

    dataset = client.post(
        "/datasets/images/classification.json",
        data={
            "dataset_name": "synthetic",
            "method": "folder",
            "folder_train": str(tmp_path / "synthetic" / "train"),
            "folder_pct_val": "25",
            "resize_width": "28",
            "resize_height": "28",
            "resize_channels": "1",
        },
        headers=ADMIN,
    )
    assert dataset.status_code == 200, dataset.get_json()
    dataset_id = dataset.get_json()["id"]
    done = finished(client, f"/datasets/{dataset_id}.json", timeout=60)
    assert done["status"] == "Done", done
    assert done["counts"] == {"train_db": 750, "val_db": 250}, done  # 1,000 images, 25% for val

    model = client.post(
        "/models/images/classification.json",
        data={
            "dataset": dataset_id,
            "model_name": "lenet",
            "standard_networks": "lenet",
            "train_epochs": "4",
            "solver_type": "ADAM",
            "learning_rate": "0.002",
            "lr_policy": "fixed",
            "batch_size": "32",
            "random_seed": "7",
        },
        headers=ADMIN,
    )
    assert model.status_code == 200, model.get_json()
    model_id = model.get_json()["id"]
    trained = finished(client, f"/models/{model_id}.json", timeout=120)
    assert trained["status"] == "Done", trained
    assert trained["snapshots"] and trained["progress"] == 1.0

    index = client.get("/index.json", headers=ADMIN).get_json()
    assert [d["id"] for d in index["datasets"]] == [dataset_id]
    assert [m["id"] for m in index["models"]] == [model_id]

    test_dir = tmp_path / "synthetic" / "test"
    label = sorted(p.name for p in test_dir.iterdir())[3]
    image = sorted((test_dir / label).iterdir())[0]
    with image.open("rb") as f:
        response = client.post(
            "/models/images/classification/classify_one.json",
            data={"job_id": model_id, "image_file": (f, image.name)},
            headers=ADMIN,
        )
    assert response.status_code == 200, response.get_json()
    predictions = response.get_json()["predictions"]
    assert predictions[0][0] == label, predictions
    assert 0 < predictions[0][1] <= 100

    lines = [
        f"{path.relative_to(test_dir)} {path.parent.name}\n"
        for path in sorted(test_dir.glob("*/*.png"))[::10]
    ]
    many = client.post(
        "/models/images/classification/classify_many.json",
        data={
            "job_id": model_id,
            "image_list": (io.BytesIO("".join(lines).encode()), "list.txt"),
            "image_folder": str(test_dir),
        },
        headers=ADMIN,
    )
    assert many.status_code == 200, many.get_json()
    body = many.get_json()
    assert body["count"] == len(lines) and body["skipped"] == 0
    assert len(body["classifications"]) == len(lines) and body["top1_accuracy"] >= 0.9
    assert time.monotonic() - started < 150
