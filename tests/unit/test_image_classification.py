"""The built-in image classification data extension and data extension discovery."""

from __future__ import annotations

import logging
from collections import Counter

import msgspec
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import digits.extensions.data as data_extensions
from digits.dataset import decode_sample, encode_sample
from digits.extensions.data import (
    GROUP,
    DataIngestionInterface,
    broken_extensions,
    get_extension,
    get_extensions,
)
from digits.extensions.data.imageClassification import DataIngestion
from digits.extensions.data.imageClassification.folders import _walk_images, split_counts
from digits.paths import PathNotAllowed
from digits.utils import override, subclass
from digits.utils.constants import TEST_DB, TRAIN_DB, VAL_DB
from digits.utils.image import ImageError


def _png(path, value: int = 0, size: tuple[int, int] = (6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _make_folder(root, counts: dict[str, int], ext: str = ".png"):
    for label, count in counts.items():
        for i in range(count):
            _png(root / label / f"img{i:03d}{ext}", value=i % 256)
    return root


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def ten_by_forty(data_root):
    return _make_folder(data_root / "train", {f"class{c}": 40 for c in range(10)})


def _ingest(data_root, **form) -> DataIngestion:
    return DataIngestion(data_roots=[str(data_root)], **form)


def test_folder_split_counts_are_exact(data_root, ten_by_forty):
    ext = _ingest(data_root, folder_train=str(ten_by_forty), folder_pct_val=25)
    train, val = ext.itemize_entries(TRAIN_DB), ext.itemize_entries(VAL_DB)
    assert (len(train), len(val), len(ext.itemize_entries(TEST_DB))) == (300, 100, 0)
    assert Counter(label for _, label in val) == {c: 10 for c in range(10)}
    assert ext.labels == [f"class{c}" for c in range(10)] == ext.get_labels()
    assert not {p for p, _ in train} & {p for p, _ in val}
    for path, label in train:
        assert f"/class{label}/" in path


def test_folder_split_with_test_percentage(data_root, ten_by_forty):
    ext = _ingest(data_root, folder_train=str(ten_by_forty), folder_pct_val=25, folder_pct_test=10)
    sizes = [len(ext.itemize_entries(s)) for s in (TRAIN_DB, VAL_DB, TEST_DB)]
    assert sizes == [260, 100, 40]  # per class 26/10/4


def test_split_is_deterministic_per_seed(data_root, ten_by_forty):
    def val_set(seed: int) -> set[str]:
        ext = _ingest(data_root, folder_train=str(ten_by_forty), seed=seed)
        return {p for p, _ in ext.itemize_entries(VAL_DB)}

    assert val_set(3) == val_set(3)
    assert val_set(3) != val_set(4)


@pytest.mark.parametrize(
    ("count", "pct_val", "pct_test", "expected"),
    [
        (40, 25, 0, (30, 10, 0)),
        (5, 25, 0, (4, 1, 0)),  # 1.25 rounds to 1
        (6, 25, 0, (4, 2, 0)),  # 1.5 rounds half up to 2
        (2, 25, 0, (1, 1, 0)),
        (3, 1, 1, (1, 1, 1)),  # non-zero stages get at least one image
        (4, 49, 49, (1, 2, 1)),  # train keeps at least one
        (10, 0, 0, (10, 0, 0)),
    ],
)
def test_split_rounding_rule(count, pct_val, pct_test, expected):
    assert split_counts(count, pct_val, pct_test) == expected


def test_labels_sorted_with_underscores_as_spaces(data_root):
    folder = _make_folder(data_root / "f", {"zebra": 2, "big_cat": 2, "Ant": 2})
    ext = _ingest(data_root, folder_train=str(folder))
    assert ext.get_labels() == ["Ant", "big cat", "zebra"]


def test_only_supported_extensions_are_used(data_root):
    folder = data_root / "f"
    for label in ("a", "b"):
        _png(folder / label / "one.PNG")
        Image.new("RGB", (4, 4)).save(folder / label / "two.bmp")
        Image.new("L", (4, 4)).save(folder / label / "three.pgm")
        Image.new("RGB", (4, 4)).save(folder / label / "skip.gif")
        (folder / label / "notes.txt").write_text("x")
        _png(folder / label / "nested" / "four.jpeg")
    ext = _ingest(data_root, folder_train=str(folder), folder_pct_val=0)
    names = sorted(p.rsplit("/", 1)[1] for p, _ in ext.itemize_entries(TRAIN_DB))
    assert names == sorted(["one.PNG", "two.bmp", "three.pgm", "four.jpeg"] * 2)


def test_too_few_images_in_a_class_names_it(data_root):
    folder = _make_folder(data_root / "f", {"dogs": 5, "cats": 1})
    ext = _ingest(data_root, folder_train=str(folder))
    with pytest.raises(ValueError, match=r"'cats'.* 1 images.*minimum of 2"):
        ext.itemize_entries(TRAIN_DB)
    ext = _ingest(data_root, folder_train=str(folder), folder_train_min_per_class=6)
    with pytest.raises(ValueError, match=r"'cats'"):
        ext.get_labels()


def test_max_per_class(data_root, ten_by_forty):
    ext = _ingest(
        data_root, folder_train=str(ten_by_forty), folder_pct_val=20, folder_train_max_per_class=10
    )
    assert (len(ext.itemize_entries(TRAIN_DB)), len(ext.itemize_entries(VAL_DB))) == (80, 20)


def test_separate_val_and_test_folders(data_root, ten_by_forty):
    val = _make_folder(data_root / "val", {"class3": 4, "class1": 2})
    test = _make_folder(data_root / "test", {"class9": 3})
    ext = _ingest(
        data_root,
        folder_train=str(ten_by_forty),
        folder_pct_val=90,  # replaced by the separate folders, so not summed
        folder_pct_test=20,
        has_val_folder=True,
        folder_val=str(val),
        has_test_folder="on",
        folder_test=str(test),
    )
    assert len(ext.itemize_entries(TRAIN_DB)) == 400  # percentages ignored with separate folders
    assert Counter(label for _, label in ext.itemize_entries(VAL_DB)) == {3: 4, 1: 2}
    assert Counter(label for _, label in ext.itemize_entries(TEST_DB)) == {9: 3}


def test_val_folder_with_unknown_class(data_root, ten_by_forty):
    val = _make_folder(data_root / "val", {"unicorn": 3})
    ext = _ingest(
        data_root, folder_train=str(ten_by_forty), has_val_folder=True, folder_val=str(val)
    )
    with pytest.raises(ValueError, match="'unicorn'.*not a class of folder_train"):
        ext.itemize_entries(VAL_DB)


@pytest.mark.parametrize(
    ("form", "match"),
    [
        ({"resize_channels": 2}, "resize_channels must be 1 .* or 3 .*not 2"),
        ({"resize_mode": "stretch"}, "resize_mode 'stretch'.*squash"),
        ({"folder_pct_val": 101}, "folder_pct_val must be in 0..100, not 101"),
        ({"folder_pct_val": -1}, "folder_pct_val"),
        ({"folder_pct_val": 60, "folder_pct_test": 50}, "110%"),
        ({"folder_pct_val": "abc"}, "folder_pct_val must be an integer, not 'abc'"),
        ({"encoding": "webp"}, "encoding 'webp'"),
        ({"backend": "hdf5"}, "backend 'hdf5'"),
        ({"method": "ftp"}, "method 'ftp'"),
        ({"resize_width": 0}, "resize_width"),
        ({"folder_train_min_per_class": 5, "folder_train_max_per_class": 3}, "max_per_class"),
        ({"has_val_folder": True}, "folder_val is required"),
        ({"has_val_folder": "maybe"}, "has_val_folder must be true or false"),
    ],
)
def test_form_validation_names_the_bad_value(data_root, ten_by_forty, form, match):
    with pytest.raises(ValueError, match=match):
        _ingest(data_root, folder_train=str(ten_by_forty), **form)


def test_folder_checks(data_root, tmp_path):
    outside = _make_folder(tmp_path / "outside", {"a": 2, "b": 2})
    with pytest.raises(PathNotAllowed, match="outside the data roots"):
        _ingest(data_root, folder_train=str(outside))
    with pytest.raises(PathNotAllowed, match="DIGITS_DATA_ROOTS is not set"):
        DataIngestion(folder_train=str(outside))
    (data_root / "empty").mkdir()
    with pytest.raises(ValueError, match="'.*empty' is empty: it has no class sub-folders"):
        _ingest(data_root, folder_train=str(data_root / "empty"))
    with pytest.raises(ValueError, match="does not exist"):
        _ingest(data_root, folder_train=str(data_root / "missing"))
    with pytest.raises(ValueError, match="folder_train is required"):
        _ingest(data_root)
    one = _make_folder(data_root / "one", {"only": 3})
    with pytest.raises(ValueError, match="at least two"):
        _ingest(data_root, folder_train=str(one)).itemize_entries(TRAIN_DB)


def test_symlinked_class_pointing_out_is_refused(data_root, tmp_path):
    folder = _make_folder(data_root / "f", {"a": 2})
    outside = _make_folder(tmp_path / "outside", {"b": 2})
    (folder / "b").symlink_to(outside / "b")
    with pytest.raises(PathNotAllowed):
        _ingest(data_root, folder_train=str(folder)).itemize_entries(TRAIN_DB)


def test_the_folder_walk_follows_links_in_the_roots_and_refuses_others(data_root, tmp_path):
    cls = data_root / "f" / "a"
    (cls / "deeper").mkdir(parents=True)
    for name in ("x.png", "deeper/y.jpg", ".hidden.png", "notes.txt"):
        (cls / name).write_bytes(b"not decoded here")
    (cls / "link.png").symlink_to(cls / "x.png")
    (cls / "deeper" / "loop").symlink_to(cls)  # a cycle: walked once
    assert _walk_images(str(cls), [str(data_root)]) == sorted(
        str(cls / n) for n in ("x.png", "deeper/y.jpg", "link.png")
    )
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (cls / "out.png").symlink_to(outside)
    with pytest.raises(PathNotAllowed):
        _walk_images(str(cls), [str(data_root)])


def test_encode_entry(data_root):
    folder = _make_folder(data_root / "f", {"a": 3, "b": 3})
    ext = _ingest(
        data_root,
        folder_train=str(folder),
        resize_width=10,
        resize_height=8,
        resize_channels=1,
        resize_mode="fill",
    )
    entry = ext.itemize_entries(TRAIN_DB)[0]
    # entries travel as msgpack: tuples come back as lists
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(ext.itemize_entries(TRAIN_DB)))
    assert wire[0] == list(entry)
    feature, label = ext.encode_entry(wire[0])
    assert feature.shape == (8, 10, 1) and feature.dtype == np.uint8
    assert label == entry[1] and isinstance(label, int)
    again, _ = DataIngestion(data_roots=[str(data_root)], **ext.get_user_data()).encode_entry(entry)
    assert np.array_equal(feature, again)  # fill noise is reproducible


def test_encode_entry_errors(data_root, tmp_path):
    folder = _make_folder(data_root / "f", {"a": 2, "b": 2})
    ext = _ingest(data_root, folder_train=str(folder))
    broken = folder / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="broken.png"):
        ext.encode_entry((str(broken), 0))
    with pytest.raises(PathNotAllowed):
        ext.encode_entry((str(tmp_path / "elsewhere.png"), 0))
    with pytest.raises(ValueError, match="entry must be"):
        ext.encode_entry("just-a-path")


def test_a_png_that_needs_no_change_is_stored_as_it_is(data_root):
    folder = data_root / "f"
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    (folder / "a").mkdir(parents=True)
    Image.fromarray(gray, "L").save(folder / "a" / "fits.png")
    Image.fromarray(gray, "L").save(folder / "a" / "fits.jpg")
    Image.fromarray(np.zeros((5, 8), np.uint8), "L").save(folder / "a" / "resized.png")
    Image.fromarray(gray, "L").convert("P").save(folder / "a" / "palette.png")
    meta = PngInfo()
    meta.add_text("comment", "x" * 5000)
    Image.fromarray(gray, "L").save(folder / "a" / "bloated.png", pnginfo=meta)
    ext = _ingest(data_root, folder_train=str(folder), resize_width=8, resize_height=6)
    ext1 = _ingest(
        data_root, folder_train=str(folder), resize_width=8, resize_height=6, resize_channels=1
    )
    fits = str(folder / "a" / "fits.png")
    feature, label, data = ext1.encode_entry_sample((fits, 1), "png")
    assert data == (folder / "a" / "fits.png").read_bytes() and label == 1
    assert np.array_equal(feature, ext1.encode_entry((fits, 1))[0])
    stored, _ = decode_sample(encode_sample(feature, label, "png", image_bytes=data))
    assert np.array_equal(stored, feature) and stored.shape == (6, 8, 1)
    # Otherwise the resized image is encoded: the very bytes encode_sample would make.
    cases = [(ext, "fits.png", "png"), (ext1, "fits.png", "jpg")]  # gray to RGB; PNG to JPEG
    cases += [(ext1, name, "png") for name in ("fits.jpg", "resized.png", "palette.png")]
    cases += [(ext1, "bloated.png", "png")]
    for extension, name, encoding in cases:
        path = str(folder / "a" / name)
        feature, label, data = extension.encode_entry_sample((path, 0), encoding)
        assert data is not None and data != (folder / "a" / name).read_bytes(), name
        assert np.array_equal(feature, extension.encode_entry((path, 0))[0])
        sample = encode_sample(feature, label, encoding, image_bytes=data)
        assert sample == encode_sample(feature, label, encoding), name
    fill = _ingest(
        data_root, folder_train=str(folder), resize_width=9, resize_height=6, resize_mode="fill"
    )
    feature, _, data = fill.encode_entry_sample((fits, 1), "png")
    assert data is None and np.array_equal(feature, fill.encode_entry((fits, 1))[0])
    assert ext1.encode_entry_sample((fits, 1), "none")[2] is None

    class Inverted(DataIngestion):
        def encode_entry(self, entry):
            feature, label = super().encode_entry(entry)
            return 255 - feature, label

    inverted = Inverted(data_roots=[str(data_root)], **ext1.get_user_data())
    feature, _, data = inverted.encode_entry_sample((fits, 1), "png")
    assert data is None and np.array_equal(feature, 255 - gray[:, :, None])
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="broken.png"):
        ext1.encode_entry_sample((str(folder / "a" / "broken.png"), 0), "png")


def test_encode_entry_confines_symlinked_files_and_folders(data_root, tmp_path):
    folder = _make_folder(data_root / "f", {"a": 2})
    outside = _make_folder(tmp_path / "outside", {"b": 2})
    inside = folder / "a" / "img000.png"
    (folder / "a" / "link-in.png").symlink_to(inside)
    (folder / "a" / "link-out.png").symlink_to(outside / "b" / "img000.png")
    (folder / "out").symlink_to(outside / "b")
    ext = _ingest(data_root, folder_train=str(folder), resize_width=6, resize_height=4)
    for _ in range(2):  # the second time, the folders are known
        assert ext.encode_entry((str(inside), 0))[0].shape == (4, 6, 3)
        assert ext.encode_entry((str(folder / "a" / "link-in.png"), 0))[1] == 0
        with pytest.raises(PathNotAllowed, match="link-out.png"):
            ext.encode_entry((str(folder / "a" / "link-out.png"), 0))
        with pytest.raises(PathNotAllowed, match="img000.png"):
            ext.encode_entry((str(folder / "out" / "img000.png"), 0))
        with pytest.raises(PathNotAllowed):
            ext.encode_entry((str(folder / "a" / ".." / ".." / ".." / "outside"), 0))
        with pytest.raises(ImageError, match="missing.png"):
            ext.encode_entry((str(folder / "a" / "missing.png"), 0))


def test_user_data_keeps_the_form_not_the_roots(data_root, ten_by_forty):
    ext = _ingest(data_root, folder_train=str(ten_by_forty), folder_pct_val="10")
    data = ext.get_user_data()
    assert "data_roots" not in data
    assert data["seed"] == 0 and data["folder_pct_val"] == "10"
    assert ext.folder_pct_val == 10 and ext.is_inference_db is False


def _labels_and_list(data_root):
    images = _make_folder(data_root / "imgs", {"x": 3})
    labels = "cat\ndog\n\nbird\n"
    listing = "\n".join(
        [
            "# a comment",
            f"{images / 'x' / 'img000.png'} 0",
            "",
            "x/img001.png   2",
            "x/img002.png 1",
        ]
    )
    return images, labels, listing


def test_textfile_uploads(data_root):
    images, labels, listing = _labels_and_list(data_root)
    ext = _ingest(
        data_root,
        method="textfile",
        textfile_labels_file=labels,
        textfile_train_images=listing.encode(),
        textfile_train_folder=str(images),
        textfile_val_images=f"{images / 'x' / 'img001.png'} 1\n",
        textfile_shuffle=0,
    )
    assert ext.get_labels() == ["cat", "dog", "bird"]
    train = ext.itemize_entries(TRAIN_DB)
    assert [label for _, label in train] == [0, 2, 1]
    assert train[1][0] == str((images / "x" / "img001.png").resolve())
    assert len(ext.itemize_entries(VAL_DB)) == 1 and ext.itemize_entries(TEST_DB) == []
    assert ext.encode_entry(train[0])[0].shape == (256, 256, 3)


def test_textfile_local_files(data_root):
    images, labels, listing = _labels_and_list(data_root)
    (data_root / "labels.txt").write_text(labels)
    (data_root / "train.txt").write_text(listing)
    ext = _ingest(
        data_root,
        method="textfile",
        textfile_use_local_files=True,
        textfile_local_labels_file=str(data_root / "labels.txt"),
        textfile_local_train_images=str(data_root / "train.txt"),
        textfile_train_folder=str(images),
    )
    assert sorted(label for _, label in ext.itemize_entries(TRAIN_DB)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("x/img000.png cat", r"line 2: label 'cat' is not an integer"),
        ("x/img000.png 3", r"line 2: label 3 is out of range; the labels file has 3 labels"),
        ("x/img000.png -1", r"line 2: label -1 is out of range"),
        ("lonely.png", r"line 2: expected 'path label'"),
    ],
)
def test_textfile_bad_lines(data_root, line, match):
    images, labels, _ = _labels_and_list(data_root)
    ext = _ingest(
        data_root,
        method="textfile",
        textfile_labels_file=labels,
        textfile_train_images=f"x/img001.png 0\n{line}\n",
        textfile_train_folder=str(images),
    )
    with pytest.raises(ValueError, match=match):
        ext.itemize_entries(TRAIN_DB)


def test_textfile_paths_are_confined(data_root, tmp_path):
    images, labels, _ = _labels_and_list(data_root)
    for listing in ("../../outside.png 0\n", f"{tmp_path / 'outside.png'} 0\n"):
        ext = _ingest(
            data_root,
            method="textfile",
            textfile_labels_file=labels,
            textfile_train_images=listing,
            textfile_train_folder=str(images),
        )
        with pytest.raises(PathNotAllowed, match="line 1"):
            ext.itemize_entries(TRAIN_DB)
    ext = _ingest(
        data_root, method="textfile", textfile_labels_file=labels, textfile_train_images="a.png 0"
    )
    with pytest.raises(ValueError, match="relative path 'a.png' needs textfile_train_folder"):
        ext.itemize_entries(TRAIN_DB)


def test_textfile_unchecked_val_list_is_ignored(data_root):
    images, labels, listing = _labels_and_list(data_root)
    ext = _ingest(
        data_root,
        method="textfile",
        textfile_labels_file=labels,
        textfile_train_images=listing,
        textfile_train_folder=str(images),
        textfile_use_val="false",
        textfile_val_images="x/img001.png 1\n",
    )
    assert ext.itemize_entries(VAL_DB) == []
    assert len(ext.itemize_entries(TRAIN_DB)) == 3


def test_textfile_required_fields(data_root):
    with pytest.raises(ValueError, match="textfile_labels_file is required"):
        _ingest(data_root, method="textfile", textfile_train_images="a 0")
    with pytest.raises(ValueError, match="textfile_train_images is required"):
        _ingest(data_root, method="textfile", textfile_labels_file="a\n")
    with pytest.raises(ValueError, match="textfile_use_val is set"):
        _ingest(
            data_root,
            method="textfile",
            textfile_labels_file="a\n",
            textfile_train_images="/x 0",
            textfile_use_val=True,
        )


def test_s3_is_validated_and_an_unreachable_endpoint_is_named(data_root, monkeypatch):
    from digits import s3
    from digits.natsserver import free_port
    from digits.s3 import S3Error

    monkeypatch.setattr(s3, "DEFAULT_ATTEMPTS", 1)  # a refused port: botocore's retries add 20 s
    with pytest.raises(ValueError, match="s3_bucket is required"):
        _ingest(data_root, method="s3")
    endpoint = f"http://127.0.0.1:{free_port()}"
    ext = _ingest(
        data_root,
        method="s3",
        s3_bucket="pics",
        s3_pct_val=10,
        s3_endpoint_url=endpoint,
        s3_accesskey="AKIDEXAMPLE",
        s3_secretkey="not-a-real-secret",
    )
    with pytest.raises(S3Error, match=f"cannot reach the endpoint {endpoint}"):
        ext.itemize_entries(TRAIN_DB)


def test_unknown_stage(data_root, ten_by_forty):
    ext = _ingest(data_root, folder_train=str(ten_by_forty))
    with pytest.raises(ValueError, match="'train'.*train_db"):
        ext.itemize_entries("train")


def test_metadata():
    assert DataIngestion.get_id() == "image-classification"
    assert DataIngestion.get_category() == "Images"
    assert DataIngestion.get_title() == "Classification"
    assert DataIngestion.get_dataset_form() is None
    assert DataIngestion.get_default_visibility() is True


def test_interface_keeps_user_data_as_attributes():
    ext = DataIngestionInterface(feature_folder="/data/x", is_inference_db=True)
    assert ext.feature_folder == "/data/x" and ext.is_inference_db is True
    assert ext.get_user_data() == {"feature_folder": "/data/x"}
    with pytest.raises(ValueError, match="'encode_entry' clashes"):
        DataIngestionInterface(encode_entry=1)
    with pytest.raises(NotImplementedError):
        ext.itemize_entries(TRAIN_DB)


def test_override_must_match_a_base_method():
    with pytest.raises(TypeError, match="no base class has it"):

        @subclass
        class Bad(DataIngestionInterface):
            @override
            def encode_entri(self, entry):
                return entry


# --- discovery -------------------------------------------------------------------------------


class FakePlugin(DataIngestionInterface):
    """A minimal plugin, as a DIGITS tutorial would write it."""

    @staticmethod
    def get_id() -> str:
        return "fake-plugin"


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    def __init__(self, value: str, loader) -> None:
        self.name, self.value, self.group, self.dist = "class", value, GROUP, None
        self._loader = loader

    def load(self):
        return self._loader()


def _raise_import_error():
    raise ModuleNotFoundError("No module named 'digitsDataPluginBroken'")


@pytest.fixture
def registry(monkeypatch):
    """Empty the discovery cache for one test; monkeypatch restores it afterwards."""
    monkeypatch.setattr(data_extensions._registry, "_cache", None)
    return monkeypatch


def test_builtin_extension_is_discovered():
    assert "image-classification" in get_extensions()
    assert get_extension("image-classification") is DataIngestion


def test_unknown_extension_lists_known_ids():
    with pytest.raises(KeyError, match="'nope'.*known ids: 'image-classification'"):
        get_extension("nope")
    with pytest.raises(ValueError):
        get_extension("nope")


def test_broken_plugin_is_recorded_and_others_keep_working(registry, caplog):
    eps = [
        FakeEntryPoint("digitsDataPluginBroken:DataIngestion", _raise_import_error),
        FakeEntryPoint("tests.fake:FakePlugin", lambda: FakePlugin),
        FakeEntryPoint("tests.fake:NotAPlugin", lambda: dict),
        FakeEntryPoint("tests.fake:Duplicate", lambda: DataIngestion),
    ]
    registry.setattr("importlib.metadata.entry_points", lambda group=None: eps)
    with caplog.at_level(logging.ERROR, logger="digits.extensions.data"):
        extensions = get_extensions(refresh=True)
    builtins = {"image-classification", "image-segmentation", "image-object-detection"}
    assert set(extensions) == builtins | {"fake-plugin"}
    broken = broken_extensions()
    assert "digitsDataPluginBroken" in broken["digitsDataPluginBroken:DataIngestion"]
    assert "not a subclass" in broken["tests.fake:NotAPlugin"]
    assert "already taken" in broken["tests.fake:Duplicate"]
    assert "digitsDataPluginBroken" in caplog.text
    assert get_extension("fake-plugin") is FakePlugin
