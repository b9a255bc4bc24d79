"""Failing plugins: a broken import is listed and skipped; a raising plugin fails only its job."""

from __future__ import annotations

import numpy as np

from digits import dataset, jobs
from digits.extensions.data import broken_extensions, get_extension, get_extensions
from tests.integration.test_ingest import finished_job
from tests.plugins.commands import create_dataset
from tests.waiting import wait_for


def test_a_plugin_that_fails_to_import_is_listed_as_broken(installed, caplog):
    extensions = get_extensions(refresh=True)
    broken = broken_extensions()
    [(name, error)] = [(n, e) for n, e in broken.items() if "digitsDataPluginBroken" in n]
    assert name == "digits-broken-plugin: digitsDataPluginBroken:DataIngestion"
    assert error == "ModuleNotFoundError: No module named 'digits_no_such_module'"
    assert "digits_no_such_module" in caplog.text
    # The others keep working: built-ins and the installed plugins.
    assert {"image-classification", "image-segmentation", "image-object-detection"} <= set(
        extensions
    )
    assert {"image-sunnybrook", "image-gradients", "test-raiser"} <= set(extensions)


async def test_raising_plugins_fail_their_jobs_and_the_rest_keep_working(
    nats_server, nc, plugin_ingest
):
    # The service logged the broken plugin when it started, and went on.
    await wait_for(lambda: "digitsDataPluginBroken" in plugin_ingest.log(), timeout=10)
    assert "No module named 'digits_no_such_module'" in plugin_ingest.log()
    await create_dataset(nats_server.url, "fails-itemize", "test-raiser", {"fail_in": "itemize"})
    await create_dataset(nats_server.url, "fails-encode", "test-raiser", {"fail_in": "encode"})
    form = {"train_image_count": 20, "val_image_count": 5, "image_width": 12, "image_height": 8}
    await create_dataset(nats_server.url, "gradients", "image-gradients", form)
    await create_dataset(nats_server.url, "broken", "digitsDataPluginBroken", {})

    job = await finished_job(nc, "fails-itemize")
    assert job.status == jobs.ERROR
    assert job.error == "RuntimeError: raiser plugin: the contour index is unreadable"
    assert job.stages[0].status == jobs.ERROR

    job = await finished_job(nc, "fails-encode")
    assert job.status == jobs.ERROR
    assert "no entry of train_db could be encoded" in job.error
    assert "raiser plugin: cannot decode entry" in job.error

    job = await finished_job(nc, "broken")
    assert job.status == jobs.ERROR
    assert "unknown data extension 'digitsDataPluginBroken'" in job.error

    job = await finished_job(nc, "gradients")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert (data.count("train_db"), data.count("val_db")) == (20, 5)
    assert data.manifest.feature_shape == [8, 12, 1]
    labels = []
    for feature, label in data.samples("train_db"):
        assert feature.dtype == np.uint8 and label.dtype == np.float32 and label.shape == (2,)
        assert np.all(np.abs(label) <= 0.5)
        labels.append(label)
    assert len({tuple(lb) for lb in labels}) == 20, "each image has its own gradient"
    assert plugin_ingest.healthy()


def test_gradients_are_reproducible_and_match_their_images(installed):
    cls = get_extension("image-gradients")
    ext = cls(train_image_count=3, val_image_count=2, image_width=16, image_height=10, seed=7)
    entries = ext.itemize_entries("train_db") + ext.itemize_entries("val_db")
    assert entries == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]
    again = cls(train_image_count=3, image_width=16, image_height=10, seed=7)
    for entry in entries[:3]:
        image, label = ext.encode_entry(entry)
        np.testing.assert_array_equal(label, again.encode_entry(entry)[1])
        gx, gy = (float(v) for v in label)
        # Intensity rises by gx * 255 across the width and gy * 255 down the height.
        rows, cols = image[:, :, 0].astype(float).mean(axis=0), image[:, :, 0].mean(axis=1)
        assert abs((rows[-1] - rows[0]) - gx * 255 * 15 / 16) <= 1.5
        assert abs((cols[-1] - cols[0]) - gy * 255 * 9 / 10) <= 1.5
    other = cls(train_image_count=3, image_width=16, image_height=10, seed=8)
    assert not np.array_equal(other.encode_entry([0, 0])[1], ext.encode_entry([0, 0])[1])
    inference = cls(is_inference_db=True, gradient_x=0.25, gradient_y="-0.5", image_width=4)
    [entry] = inference.itemize_entries("test_db")
    np.testing.assert_array_equal(inference.encode_entry(entry)[1], [0.25, -0.5])
    for bad, match in (
        ({"gradient_x": 0.7, "gradient_y": 0}, "gradient_x must be in -0.5..0.5, not 0.7"),
        ({"gradient_x": 0.1}, "give both gradient_x and gradient_y"),
        ({"image_width": "wide"}, "image_width must be an integer, not 'wide'"),
        ({"train_image_count": 0}, "train_image_count must be at least 1"),
    ):
        try:
            cls(**bad)
        except ValueError as exc:
            assert match in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
