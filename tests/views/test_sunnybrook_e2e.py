"""Sunnybrook end to end: plugin dataset -> FCN training -> inference from a DICOM in its form."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from digits import jobs
from tests.integration.test_ingest import finished_job
from tests.pluginpkg import pip_install
from tests.plugins.commands import create_dataset
from tests.plugins.sunnybrook_data import inside, make_sunnybrook
from tests.views.generic_world import create_generic_model, infer
from tests.views.test_generic_e2e import OVERLAY, _pngs

pytestmark = pytest.mark.timeout(400)

FCN = {"train_epochs": 8, "batch_size": 4, "solver_type": "ADAM", "learning_rate": 0.005}
FCN |= {"lr_policy": "fixed", "random_seed": 1, "snapshot_interval": 8}


async def test_sunnybrook_dataset_trains_an_fcn_and_a_dicom_upload_is_segmented(
    nats_server, nc, stack, tmp_path
):
    plugins = pip_install("data/sunnybrook", tmp_path / "plugins")
    env = {"PYTHONPATH": str(plugins)}
    await asyncio.gather(
        *(
            asyncio.to_thread(stack, module, **env)
            for module in ("ingest_service", "train_service", "view_service")
        )
    )
    images, contours, slices = make_sunnybrook(tmp_path / "sunnybrook")
    form = {"image_folder": str(images), "contour_folder": str(contours), "folder_pct_val": 25}
    await create_dataset(nats_server.url, "sunnybrook", "image-sunnybrook", form)
    dataset = await finished_job(nc, "sunnybrook", timeout=120)
    assert dataset.status == jobs.DONE, dataset.error

    await create_generic_model(nats_server.url, "lv-fcn", dataset.id, {**FCN, "task": ""})
    model = await finished_job(nc, "lv-fcn", timeout=300)
    assert model.status == jobs.DONE, model.error
    assert "val_accuracy" in model.extra["final_metrics"]

    # The inference form of the plugin: test_image_file is an uploaded DICOM file.
    target = next(s for s in slices if s.number == 21)
    upload = {"filename": target.dicom.name, "data": target.dicom.read_bytes()}
    request = {"job_id": model.id, "form": {"test_image_file": upload}}
    reply = await infer(nats_server.url, request, timeout=120)
    assert reply["ok"], reply
    assert (reply["task"], reply["view_extension"]) == ("segmentation", "image-segmentation")
    assert reply["input_ids"] == [target.dicom.name]
    classes = np.array(reply["outputs"][0])
    assert classes.shape == (64, 64) and set(np.unique(classes)) <= {0, 1}
    truth = inside(target.polygon, 64, 64)
    agreement = (classes.astype(bool) == truth).mean()
    assert agreement > 0.8, f"pixel agreement with the contour {agreement:.2f}"
    html = reply["views_html"][0]
    assert OVERLAY.search(html)
    overlay = _pngs(html)[0]
    assert overlay.shape == (64, 64, 3)
    legend = reply["header_html"]
    assert "left ventricle" in legend and "background" in legend
    assert "#ffffff" in legend, "the dataset's palette colours the left ventricle"

    # A DICOM that is not one: the plugin's error comes back, and the service goes on.
    request = {"job_id": model.id, "form": {"test_image_file": b"not a DICOM file"}}
    reply = await infer(nats_server.url, request)
    assert not reply["ok"] and "data extension 'image-sunnybrook'" in reply["error"]
    reply = await infer(nats_server.url, {"job_id": model.id, "db": "val", "limit": 2})
    assert reply["ok"] and len(reply["views_html"]) == 2
