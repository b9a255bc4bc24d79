"""The built-in segmentation and object detection extensions, in-process and through ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits import dataset, jobs
from digits.extensions.data import get_extension
from digits.utils.constants import COLOR_PALETTE_ATTRIBUTE
from tests.integration.test_ingest import finished_job
from tests.plugins.commands import create_dataset

PALETTE = [0, 0, 0, 255, 0, 0, 0, 255, 0]  # background black, class 1 red, class 2 green


def make_segmentation(root: Path, count: int = 10) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """RGB feature PNGs and paletted label PNGs of the same names; the class arrays by name."""
    features, labels = root / "features", root / "labels"
    features.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(1)
    truth = {}
    for i in range(count):
        classes = rng.integers(0, 3, (12, 16), dtype=np.uint8)
        # The green channel holds the image's number, so a sample tells which image it is.
        pixels = np.stack([classes * 80, np.full_like(classes, i), classes * 40], axis=-1)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(features / f"img{i:03d}.png")
        label = Image.fromarray(classes, "P")
        label.putpalette(PALETTE)
        label.save(labels / f"img{i:03d}.png")
        truth[f"img{i:03d}"] = classes
    (root / "classes.txt").write_text("background\ncar\ntree\n")
    return features, labels, truth


KITTI = "{kind} 0.00 0 -1.57 {x1} {y1} {x2} {y2} 1.5 1.6 3.9 1.0 1.7 40.0 -1.5\n"


def make_kitti(root: Path) -> tuple[Path, Path, dict[str, list[list[float]]]]:
    """Images and KITTI label files; the expected [class, x1, y1, x2, y2] rows by name."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    classes = {"car": 0, "pedestrian": 1}  # sorted names of the types found
    boxes = {
        "000000": [("Car", 1, 2, 10, 8)],
        "000001": [("Pedestrian", 0, 0, 5.5, 9.5), ("Car", 10, 1, 19, 9)],
        "000002": [("Car", 2, 2, 4, 4), ("Car", 5, 5, 8, 8), ("Pedestrian", 11, 0, 13, 9)],
        "000003": [],
    }
    expected = {}
    for i, (name, objs) in enumerate(boxes.items()):
        pixels = np.full((10, 20, 3), 30 * i, np.uint8)
        Image.fromarray(pixels, "RGB").save(images / f"{name}.png")
        text = "".join(KITTI.format(kind=k, x1=a, y1=b, x2=c, y2=d) for k, a, b, c, d in objs)
        (labels / f"{name}.txt").write_text(text)
        expected[name] = [[classes[k.lower()], a, b, c, d] for k, a, b, c, d in objs]
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(images / "000004.png")  # no labels
    (labels / "000005.txt").write_text("Car 0 0\n")  # malformed; its image:
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(images / "000005.png")
    return images, labels, expected


def test_segmentation_pairs_images_and_reads_class_indices(tmp_path):
    features, labels, truth = make_segmentation(tmp_path, count=4)
    cls = get_extension("image-segmentation")
    ext = cls(
        data_roots=[str(tmp_path)],
        feature_folder=str(features),
        label_folder=str(labels),
        folder_pct_val=25,
        class_labels_file=str(tmp_path / "classes.txt"),
        channel_conversion="L",
    )
    train, val = ext.itemize_entries("train_db"), ext.itemize_entries("val_db")
    assert (len(train), len(val)) == (3, 1) and ext.itemize_entries("test_db") == []
    assert ext.get_labels() == ["background", "car", "tree"]
    assert ext.userdata[COLOR_PALETTE_ATTRIBUTE][:9] == PALETTE
    for entry in train + val:
        feature, label = ext.encode_entry(entry)
        assert feature.shape == (12, 16, 1) and feature.dtype == np.uint8
        np.testing.assert_array_equal(label, truth[Path(entry[0]).stem])
    # A label image with another palette, or none at all, is refused with the file's name.
    odd = Image.fromarray(np.zeros((12, 16), np.uint8), "P")
    odd.putpalette([9, 9, 9] * 3)
    odd.save(labels / "img000.png")
    with pytest.raises(ValueError, match="img000.png' has a different palette"):
        ext.encode_entry([str(features / "img000.png"), str(labels / "img000.png")])
    with pytest.raises(ValueError, match="no label image named 'img001'"):
        ext.encode_entry([str(features / "img001.png"), None])


def test_segmentation_with_a_colour_map_file(tmp_path):
    features, labels = tmp_path / "f", tmp_path / "l"
    features.mkdir()
    labels.mkdir()
    classes = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(features / "a.png")
    Image.fromarray(colours[classes], "RGB").save(labels / "a.png")
    (tmp_path / "map.txt").write_text("0 0 0\n255 0 0\n0 0 255\n")
    cls = get_extension("image-segmentation")
    form = {"feature_folder": str(features), "label_folder": str(labels), "folder_pct_val": 0}
    form |= {"colormap_method": "textfile", "colormap_text_file": str(tmp_path / "map.txt")}
    ext = cls(data_roots=[str(tmp_path)], **form)
    [entry] = ext.itemize_entries("train_db")
    np.testing.assert_array_equal(ext.encode_entry(entry)[1], classes)
    assert ext.get_labels() == ["class 0", "class 1", "class 2"]
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8), "RGB").save(labels / "a.png")
    with pytest.raises(ValueError, match=r"colour \(7, 7, 7\) at \(x=0, y=0\)"):
        ext.encode_entry(entry)
    (tmp_path / "bad.txt").write_text("0 0 0\n255 0\n")
    with pytest.raises(ValueError, match="colormap_text_file line 2: expected 'r g b'"):
        cls(data_roots=[str(tmp_path)], **{**form, "colormap_text_file": str(tmp_path / "bad.txt")})
    with pytest.raises(ValueError, match="colormap_method 'rainbow' is not supported"):
        cls(data_roots=[str(tmp_path)], **{**form, "colormap_method": "rainbow"})


def test_object_detection_reads_kitti_boxes(tmp_path):
    images, labels, expected = make_kitti(tmp_path)
    cls = get_extension("image-object-detection")
    ext = cls(
        data_roots=[str(tmp_path)],
        train_image_folder=str(images),
        train_label_folder=str(labels),
        resize_image_width=40,
        resize_image_height=5,
    )
    entries = ext.itemize_entries("train_db")
    assert ext.get_labels() == ["car", "pedestrian"] and ext.itemize_entries("val_db") == []
    assert len(entries) == 6
    by_name = {Path(e[0]).stem: e for e in entries}
    feature, label = ext.encode_entry(by_name["000002"])
    assert feature.shape == (5, 40, 3) and label.dtype == np.float32 and label.shape == (3, 5)
    scale = np.array([1, 2, 0.5, 2, 0.5], np.float32)  # x doubled, y halved
    np.testing.assert_allclose(label, np.array(expected["000002"], np.float32) * scale)
    feature, label = ext.encode_entry(by_name["000003"])
    np.testing.assert_array_equal(label, [[-1, 0, 0, 0, 0]] * 3)
    with pytest.raises(ValueError, match="no label file 000004.txt"):
        ext.encode_entry(by_name["000004"])
    with pytest.raises(ValueError, match="000005.txt' line 1: expected at least 8 fields"):
        ext.encode_entry(by_name["000005"])
    with pytest.raises(ValueError, match="give both resize_image_width and resize_image_height"):
        cls(
            data_roots=[str(tmp_path)],
            train_image_folder=str(images),
            train_label_folder=str(labels),
            resize_image_width=40,
        )


def test_builtin_forms_render(tmp_path):
    from flask import Flask, render_template_string

    app = Flask(__name__)
    app.config.update(SECRET_KEY="test", WTF_CSRF_ENABLED=False)
    with app.test_request_context():
        for ext_id, field in (
            ("image-segmentation", "colormap_text_file"),
            ("image-object-detection", "train_label_folder"),
        ):
            cls = get_extension(ext_id)
            source, context = cls.get_dataset_template(cls.get_dataset_form())
            assert f'name="{field}"' in render_template_string(source, **context)


async def test_segmentation_and_detection_datasets_through_ingest(
    nats_server, nc, plugin_ingest, tmp_path
):
    features, labels, truth = make_segmentation(tmp_path / "seg")
    form = {"feature_folder": str(features), "label_folder": str(labels), "folder_pct_val": 20}
    form |= {"class_labels_file": str(tmp_path / "seg" / "classes.txt"), "encoding": "png"}
    await create_dataset(nats_server.url, "segmentation", "image-segmentation", form)
    images, kitti_labels, expected = make_kitti(tmp_path / "kitti")
    form = {"train_image_folder": str(images), "train_label_folder": str(kitti_labels)}
    await create_dataset(nats_server.url, "detection", "image-object-detection", form)

    job = await finished_job(nc, "segmentation")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert (data.count("train_db"), data.count("val_db")) == (8, 2)
    assert data.labels == ["background", "car", "tree"]
    assert data.manifest.extra[COLOR_PALETTE_ATTRIBUTE][:9] == PALETTE
    assert len(data.manifest.extra[COLOR_PALETTE_ATTRIBUTE]) == 768
    assert data.manifest.encoding == "png"
    seen = 0
    for stage in ("train_db", "val_db"):
        for feature, label in data.samples(stage):
            name = f"img{int(feature[1, 0, 1]):03d}"  # the green channel holds the index
            np.testing.assert_array_equal(label, truth[name])
            assert feature.shape == (12, 16, 3) and label.dtype == np.uint8
            seen += 1
    assert seen == 10

    job = await finished_job(nc, "detection")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    train = data.manifest.stages["train_db"]
    assert (train.count, train.skipped) == (4, 2)  # no label file; a malformed label file
    assert data.labels == ["car", "pedestrian"]
    found = {}
    for feature, label in data.samples("train_db"):
        assert label.shape == (3, 5) and label.dtype == np.float32
        found[int(feature[0, 0, 0]) // 30] = label
    for i, name in enumerate(sorted(expected)):
        rows = np.array(expected[name] + [[-1, 0, 0, 0, 0]] * (3 - len(expected[name])))
        np.testing.assert_allclose(found[i], rows.astype(np.float32))


def test_features_of_several_sizes_are_kept_without_a_mean_image(tmp_path):
    from ingest_service.encode import encode_chunk
    from ingest_service.finalize import merge_chunks

    features, labels, _ = make_segmentation(tmp_path, count=4)
    small = np.zeros((6, 8), np.uint8)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8), "RGB").save(features / "img003.png")
    label = Image.fromarray(small, "P")
    label.putpalette(PALETTE)
    label.save(labels / "img003.png")
    form = dict(
        data_roots=[str(tmp_path)],
        feature_folder=str(features),
        label_folder=str(labels),
        folder_pct_val=0,
        channel_conversion="RGB",
    )
    entries = [
        [str(features / f"img{i:03d}.png"), str(labels / f"img{i:03d}.png")] for i in range(4)
    ]
    whole = encode_chunk("image-segmentation", form, entries, "none", True)
    assert (whole.written, whole.skipped, whole.mixed_shapes, whole.mean) == (4, 0, True, None)
    # Chunks of different sizes, each uniform by itself, also end without a mean.
    parts = [
        encode_chunk("image-segmentation", form, e, "none", True)
        for e in (entries[:3], entries[3:])
    ]
    assert all(p.mean for p in parts)
    stats = merge_chunks(parts)
    assert stats["samples"] == 4 and stats["mean"] is None and stats["mixed_shapes"] is True
