"""The train service on Keras backends other than TensorFlow: nothing TF-only in its path."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os

import pytest

from digits import jobs
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_train import (
    DATASET_FORM,
    LENET,
    create_model,
    dataset_job_id,
    digits_folder,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("backend", ["torch"])
async def test_lenet_trains_on_another_keras_backend(
    backend,
    nats_server,
    nc,
    stack,
    digits_folder,  # noqa: F811
    tmp_path,
):
    if importlib.util.find_spec(backend) is None:
        message = f"{backend} is not installed (.ci/run installs it)"
        if os.environ.get("DIGITS_REQUIRE_BACKENDS"):
            pytest.fail(message)
        pytest.skip(message)
    await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service"),
        asyncio.to_thread(stack, "train_service", KERAS_BACKEND=backend),
    )
    await create_dataset(
        nats_server.url, "synthetic", {**DATASET_FORM, "folder_train": str(digits_folder)}
    )
    dataset_id = await dataset_job_id(nc, "synthetic")
    form = {**LENET, "train_epochs": 2, "snapshot_interval": 1}
    await create_model(nats_server.url, f"lenet-{backend}", dataset_id, form)
    model = await finished_job(nc, f"lenet-{backend}", timeout=240)
    assert model.status == jobs.DONE, model.error
    assert model.extra["backend"] == backend and model.extra["num_replicas_in_sync"] == 1
    assert model.extra["snapshots"] == [1, 2]
    assert model.extra["final_metrics"]["val_accuracy"] >= 0.8
    folder = tmp_path / "store" / "models" / model.id
    info = json.loads((folder / "info.json").read_text())
    assert info["saved_model"] is None and not (folder / "saved_model").exists(), "TF only"
