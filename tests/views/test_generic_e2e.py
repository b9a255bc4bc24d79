"""Generic models end to end: real train and view services, real Keras, plain msgpack RPC."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from digits import events, jobs
from tests.integration.test_ingest import finished_job
from tests.integration.test_train import job_events
from tests.pluginpkg import pip_install
from tests.views.generic_world import (
    SEG_LABELS,
    blobs,
    create_generic_model,
    dataset_job,
    infer,
    png,
    ramps,
    write_dataset,
)

pytestmark = pytest.mark.timeout(400)

SEG_DS, REG_DS = "20260301-000000-5e9d", "20260301-000000-9ad5"
OVERLAY = re.compile(r'<img class="overlay" alt="segmentation overlay" src="data:image/png;base64,')
TRAIN = {"train_epochs": 4, "batch_size": 4, "solver_type": "ADAM", "learning_rate": 0.005}
TRAIN |= {"lr_policy": "fixed", "random_seed": 3, "snapshot_interval": 2}


def _pngs(html: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in found]


def _iou(classes: np.ndarray, mask: np.ndarray) -> float:
    both, either = (classes == 1) & (mask == 1), (classes == 1) | (mask == 1)
    return float(both.sum() / max(either.sum(), 1))


async def test_a_segmentation_fcn_trains_and_renders_through_the_view_service(
    nats_server, nc, stack, tmp_path
):
    rng = np.random.default_rng(5)
    train, val = blobs(24, rng), blobs(6, rng)
    store = tmp_path / "store"
    write_dataset(
        store / "datasets" / SEG_DS, SEG_DS, {"train_db": train, "val_db": val}, SEG_LABELS
    )
    await dataset_job(nc, store, SEG_DS, "blobs", extension="image-segmentation")
    await asyncio.gather(
        asyncio.to_thread(stack, "train_service"), asyncio.to_thread(stack, "view_service")
    )
    await create_generic_model(nats_server.url, "fcn", SEG_DS, TRAIN)
    model = await finished_job(nc, "fcn", timeout=240)
    assert model.status == jobs.DONE, model.error
    assert model.extension == "image-generic" and model.extra["snapshots"] == [2, 4]
    found = await job_events(nc, model.id)
    progress = [e for e in found if isinstance(e, events.TrainProgress)]
    assert {"loss", "accuracy"} <= set(progress[0].metrics), "pixel accuracy is reported"
    last_val = [e for e in progress if e.phase == "val"][-1].metrics
    assert last_val["val_accuracy"] > 0.9, last_val
    assert any(isinstance(e, events.ModelReady) for e in found)

    # Infer one image: a (32, 32) class map, the overlay with the legend.
    images, masks = blobs(2, np.random.default_rng(11))
    reply = await infer(nats_server.url, {"job_id": model.id, "images": [png(images[0])]})
    assert reply["ok"], reply
    assert (reply["task"], reply["view_extension"]) == ("segmentation", "image-segmentation")
    assert reply["epoch"] == 4 and reply["input_ids"] == ["image 0"]
    classes = np.array(reply["outputs"][0])
    assert classes.shape == (32, 32) and set(np.unique(classes)) <= {0, 1}
    assert _iou(classes, masks[0]) > 0.6, "the class map finds the disk"
    html = reply["views_html"][0]
    assert OVERLAY.search(html) and "blob:" in html
    overlay, class_map = _pngs(html)
    assert overlay.shape == (32, 32, 3) and class_map.shape == (32, 32, 3)
    assert "Legend" in reply["header_html"] and "background" in reply["header_html"]

    # Infer many from the model's own val_db (with the ground truth), epoch 2.
    request = {"job_id": model.id, "epoch": 2, "db": "val", "limit": 3}
    request["view_config"] = {"opacity": 0.8, "colormap": "generated"}
    reply = await infer(nats_server.url, request)
    assert reply["ok"], reply
    assert reply["epoch"] == 2 and len(reply["views_html"]) == len(reply["outputs"]) == 3
    assert all('class="ground-truth"' in h for h in reply["views_html"])
    # The raw data view on the same model, chosen by id.
    request = {"job_id": model.id, "images": [png(images[1])], "view_extension": "all-outputs"}
    reply = await infer(nats_server.url, request)
    assert reply["ok"] and "32x32x2" in reply["views_html"][0]

    # Bad requests get clear errors, and the service goes on serving.
    bad = [
        (
            {"job_id": model.id, "images": [png(images[0])], "view_extension": "pie-chart"},
            "unknown view extension 'pie-chart'; known ids: 'all-outputs'",
        ),
        (
            {"job_id": "20990101-000000-0000", "images": [png(images[0])]},
            "no job with id '20990101-000000-0000'",
        ),
        (
            {"job_id": model.id, "images": [png(images[0])], "db": "val"},
            "give exactly one input source",
        ),
        ({"job_id": model.id, "images": [b"not an image"]}, "image 0:"),
        ({"job_id": model.id, "db": "val", "limit": 0}, "malformed InferGeneric request"),
        (
            {"job_id": model.id, "images": [png(images[0])], "view_config": {"opacity": 3}},
            "opacity 3 is out of range 0..1",
        ),
        (
            {"job_id": model.id, "form": {"x": 1}, "data_extension": "nope"},
            "unknown data extension 'nope'",
        ),
    ]
    for request, message in bad:
        reply = await infer(nats_server.url, request)
        assert reply["ok"] is False and message in reply["error"], (request, reply)
    reply = await infer(nats_server.url, {"job_id": model.id, "images": [png(images[1])]})
    assert reply["ok"] and _iou(np.array(reply["outputs"][0]), masks[1]) > 0.6


async def test_a_regression_model_renders_through_the_gradients_view_plugin(
    nats_server, nc, stack, tmp_path
):
    rng = np.random.default_rng(8)
    store = tmp_path / "store"
    write_dataset(
        store / "datasets" / REG_DS,
        REG_DS,
        {"train_db": ramps(64, rng), "val_db": ramps(8, rng)},
        [],
    )
    await dataset_job(nc, store, REG_DS, "ramps")
    plugins = pip_install("view/gradients", tmp_path / "plugins")
    await asyncio.gather(
        asyncio.to_thread(stack, "train_service"),
        asyncio.to_thread(stack, "view_service", PYTHONPATH=str(plugins)),
    )
    form = {**TRAIN, "train_epochs": 15, "batch_size": 8, "learning_rate": 0.01}
    await create_generic_model(nats_server.url, "gradients", REG_DS, form)
    model = await finished_job(nc, "gradients", timeout=240)
    assert model.status == jobs.DONE, model.error
    metrics = model.extra["final_metrics"]
    assert "val_loss" in metrics and "val_mae" in metrics and "val_accuracy" not in metrics

    images, labels = ramps(3, np.random.default_rng(21))
    request = {"job_id": model.id, "images": [png(i) for i in images]}
    request |= {"view_extension": "image-gradients-view", "view_config": {"arrow_color": "blue"}}
    reply = await infer(nats_server.url, request)
    assert reply["ok"], reply
    assert reply["task"] == "regression" and len(reply["outputs"]) == 3
    predicted = np.array(reply["outputs"])
    assert predicted.shape == (3, 2)
    error = np.abs(predicted - np.array(labels)).mean()
    assert error < 0.25, f"the gradients are learnt: {predicted} vs {labels}"
    assert "gradients.css" in reply["header_html"] and "3 images" in reply["header_html"]
    for html, vector in zip(reply["views_html"], predicted, strict=True):
        assert f"dx = {round(float(vector[0]), 4)}" in html
        (drawn,) = _pngs(html)
        assert drawn.shape == (64, 64, 3)
        assert ((drawn[:, :, 2] == 255) & (drawn[:, :, 0] == 0)).any(), "a blue arrow"
    # Without a view id, a regression model gets the raw data view.
    reply = await infer(nats_server.url, {"job_id": model.id, "images": [png(images[0])]})
    assert reply["ok"] and reply["view_extension"] == "all-outputs"
    assert reply["header_html"] and "float32" in reply["views_html"][0]
    # A bad config of the plugin's is reported, naming the value.
    request = {**request, "view_config": {"arrow_color": "mauve"}}
    reply = await infer(nats_server.url, request)
    assert not reply["ok"] and "arrow_color 'mauve' is not one of red" in reply["error"]
