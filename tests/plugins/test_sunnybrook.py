"""The Sunnybrook plugin, pip-installed as in the DIGITS tutorial, end to end through ingest."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from digits import dataset, jobs
from digits.extensions.data import get_extension, get_extensions
from digits.paths import PathNotAllowed
from digits.utils.constants import COLOR_PALETTE_ATTRIBUTE
from tests.integration.test_ingest import finished_job
from tests.plugins.commands import create_dataset
from tests.plugins.sunnybrook_data import (
    contour_path,
    inside,
    make_sunnybrook,
    perimeter,
    shoelace,
    write_contour,
)

pytestmark = pytest.mark.timeout(240)


def check_mask(mask: np.ndarray, polygon, rectangle) -> None:
    """The mask's foreground is the polygon: exact for rectangles, within the outline otherwise."""
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    if rectangle is not None:
        x0, y0, x1, y1 = rectangle
        expected = np.zeros_like(mask)
        expected[y0 : y1 + 1, x0 : x1 + 1] = 1  # the outline's pixels count as inside
        np.testing.assert_array_equal(mask, expected)
        return
    reference = inside(polygon, *mask.shape)
    assert not (reference & (mask == 0)).any(), "a pixel centre inside the polygon is missing"
    assert not (mask.astype(bool) & ~dilate(reference)).any(), "foreground away from the contour"
    area, outline = shoelace(polygon), perimeter(polygon)
    assert area - 1 <= mask.sum() <= area + outline


def dilate(region: np.ndarray) -> np.ndarray:
    """``region`` grown by one pixel in each of the 8 directions."""
    grown = region.copy()
    padded = np.pad(region, 1)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy : dy + region.shape[0], dx : dx + region.shape[1]]
    return grown


def test_pip_install_lists_image_sunnybrook(installed):
    cls = get_extensions()["image-sunnybrook"]
    assert cls.__module__ == "digitsDataPluginSunnybrook.data"
    assert (cls.get_category(), cls.get_title()) == ("Images", "Sunnybrook LV Segmentation")
    assert get_extension("image-gradients").get_default_visibility() is False


def test_the_plugin_imports_and_itemizes_without_flask(installed, tmp_path):
    images, contours, _ = make_sunnybrook(tmp_path)
    code = (
        "import sys; sys.modules['flask'] = sys.modules['flask_wtf'] = None\n"
        "from digitsDataPluginSunnybrook import DataIngestion as D\n"
        f"ext = D(image_folder={str(images)!r}, contour_folder={str(contours)!r}, "
        f"data_roots=[{str(tmp_path)!r}])\n"
        "print(len(ext.itemize_entries('train_db')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "18"  # 20 contours, 10% for validation


def test_form_validation_names_the_bad_value(installed, tmp_path):
    images, contours, _ = make_sunnybrook(tmp_path)
    cls = get_extension("image-sunnybrook")
    form = {"image_folder": str(images), "contour_folder": str(contours)}
    with pytest.raises(ValueError, match="channel_conversion 'CMYK'"):
        cls(data_roots=[str(tmp_path)], channel_conversion="CMYK", **form)
    with pytest.raises(ValueError, match="folder_pct_val must be in 0..100, not 150"):
        cls(data_roots=[str(tmp_path)], folder_pct_val=150, **form)
    with pytest.raises(PathNotAllowed, match="outside the data roots"):
        cls(data_roots=[str(tmp_path / "images")], **form)
    with pytest.raises(ValueError, match="contour_folder is required"):
        cls(data_roots=[str(tmp_path)], image_folder=str(images))
    empty = tmp_path / "empty"
    empty.mkdir()
    ext = cls(data_roots=[str(tmp_path)], image_folder=str(images), contour_folder=str(empty))
    with pytest.raises(ValueError, match="holds no IM-0001-NNNN-icontour-manual.txt"):
        ext.itemize_entries("train_db")


def test_inference_from_a_dicom_file_or_a_validation_record(installed, tmp_path):
    images, contours, slices = make_sunnybrook(tmp_path)
    cls = get_extension("image-sunnybrook")
    form = {"image_folder": str(images), "contour_folder": str(contours), "folder_pct_val": 25}
    roots = [str(tmp_path)]
    one = cls(is_inference_db=True, data_roots=roots, test_image_file=str(slices[0].dicom), **form)
    assert one.itemize_entries("train_db") == []
    [entry] = one.itemize_entries("test_db")
    feature, label = one.encode_entry(entry)
    assert label is None and feature.shape == (64, 64, 1) and feature.dtype == np.uint16
    trained = cls(data_roots=roots, **form)
    records = trained.validation_entries()
    assert len(records) == 5
    record = cls(is_inference_db=True, data_roots=roots, validation_record="2", **form)
    [entry] = record.itemize_entries("test_db")
    assert entry == records[2]
    feature, mask = record.encode_entry(entry)
    by_number = {s.number: s for s in slices}
    expected = by_number[int(feature[0, 0, 0])]
    check_mask(mask, expected.polygon, expected.rectangle)
    with pytest.raises(ValueError, match="validation_record '9' is not a record"):
        cls(is_inference_db=True, data_roots=roots, validation_record="9", **form).itemize_entries(
            "test_db"
        )
    with pytest.raises(ValueError, match="give test_image_file"):
        cls(is_inference_db=True, data_roots=roots, **form)
    outside = cls(is_inference_db=True, data_roots=roots, test_image_file="/etc/hostname")
    with pytest.raises(PathNotAllowed):
        outside.itemize_entries("test_db")


def test_forms_and_templates_render(installed, tmp_path):
    from flask import Flask, render_template_string

    images, contours, _ = make_sunnybrook(tmp_path)
    cls = get_extension("image-sunnybrook")
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", WTF_CSRF_ENABLED=False)
    with app.test_request_context():
        form = cls.get_dataset_form()
        assert {"image_folder", "contour_folder", "channel_conversion", "folder_pct_val"} <= set(
            form._fields
        )
        source, context = cls.get_dataset_template(form)
        html = render_template_string(source, **context)
        assert 'name="image_folder"' in html and 'value="L"' in html
        ext = cls(
            data_roots=[str(tmp_path)],
            image_folder=str(images),
            contour_folder=str(contours),
            folder_pct_val=25,
        )
        inference = ext.get_inference_form()
        assert len(inference.validation_record.choices) == 1 + 5
        source, context = cls.get_inference_template(inference)
        html = render_template_string(source, **context)
        assert 'name="test_image_file"' in html and "image" in html


async def test_a_sunnybrook_folder_becomes_a_segmentation_dataset(
    nats_server, nc, plugin_ingest, tmp_path
):
    images, contours, slices = make_sunnybrook(tmp_path)
    # Skipped and counted: a contour whose slice is missing, and a slice that is not DICOM.
    write_contour(contour_path(contours, "SC-XX-07", 99), [(1, 1), (9, 1), (9, 9)])
    (images / "SC-XX-7" / "IM-0002-0047.dcm").write_bytes(b"not a DICOM file at all")
    form = {
        "image_folder": str(images),
        "contour_folder": str(contours),
        "channel_conversion": "L",
        "folder_pct_val": 25,
    }
    await create_dataset(nats_server.url, "sunnybrook", "image-sunnybrook", form)
    job = await finished_job(nc, "sunnybrook")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    train, val = data.manifest.stages["train_db"], data.manifest.stages["val_db"]
    # 21 contours: floor(21 * 25 / 100) = 5 for validation, 16 for training; 2 are skipped.
    assert (train.count + train.skipped, val.count + val.skipped) == (16, 5)
    assert train.skipped + val.skipped == 2 and train.count + val.count == 19
    reasons = " ".join(job.extra["skip_reasons"])
    assert "no DICOM slice found" in reasons and "is not a DICOM file" in reasons
    assert data.labels == ["background", "left ventricle"]
    assert data.manifest.extra[COLOR_PALETTE_ATTRIBUTE][:6] == [0, 0, 0, 255, 255, 255]
    assert data.manifest.feature_shape == [64, 64, 1] and data.manifest.feature_dtype == "uint16"
    by_number = {s.number: s for s in slices}
    seen = set()
    for stage in ("train_db", "val_db"):
        for feature, mask in data.samples(stage):
            number = int(feature[0, 0, 0])  # the generator wrote the slice number there
            seen.add(number)
            s = by_number[number]
            assert feature.dtype == np.uint16 and mask.shape == (64, 64)
            assert feature.max() > 255, "16-bit data keeps its range"
            check_mask(mask, s.polygon, s.rectangle)
    assert seen == set(by_number) - {47}
