"""The built-in object detection data extension: images and KITTI label files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from digits.paths import confine
from digits.utils import constants, override, subclass
from digits.utils.image import SUPPORTED_EXTENSIONS, image_to_array, load_image, resize_image

from .. import fields, files
from ..interface import DataIngestionInterface
from . import kitti

TEMPLATE = "template.html"
CHANNEL_CONVERSIONS = ("none", "L", "RGB")
MAX_SIDE = 8192
MAX_BOXES = 1000
PAD_ROW = [-1.0, 0.0, 0.0, 0.0, 0.0]  # a padding row: class -1, no box

# [image path, boxes ([[class, x1, y1, x2, y2], ...]) or the reason there are none, rows]
Entry = list[Any]


@subclass
class DataIngestion(DataIngestionInterface):
    """Object detection: images with KITTI label files of the same name.

    A sample is (HWC uint8 image, float32 (rows, 5) array of [class, x1, y1, x2, y2]); rows is
    max_bboxes, or the most objects any image has; unused rows are [-1, 0, 0, 0, 0].
    """

    def __init__(
        self,
        is_inference_db: bool = False,
        data_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the form (DIGITS's field names); ValueError names the bad value."""
        kwargs.setdefault("seed", 0)
        super().__init__(is_inference_db=is_inference_db, **kwargs)
        roots = self.data_roots = files.roots_list(data_roots)
        form = kwargs
        self.seed = fields.get_int(form, "seed", 0, lo=0)
        self.folder_pct_val = fields.get_int(form, "folder_pct_val", 0, lo=0, hi=100)
        value = form.get("channel_conversion")
        self.channel_conversion = "none" if fields.is_blank(value) else value
        if self.channel_conversion not in CHANNEL_CONVERSIONS:
            raise ValueError(
                f"channel_conversion {value!r} is not supported; use one of {CHANNEL_CONVERSIONS}"
            )
        self.encoding = fields.get_choice(form, "encoding", "none", ("none", "png", "jpg"))
        self.train_image_folder = files.folder(
            "train_image_folder", fields.get_str(form, "train_image_folder"), roots
        )
        self.train_label_folder = files.folder(
            "train_label_folder", fields.get_str(form, "train_label_folder"), roots
        )
        val_images = fields.get_str(form, "val_image_folder")
        val_labels = fields.get_str(form, "val_label_folder")
        if (val_images is None) != (val_labels is None):
            raise ValueError("give both val_image_folder and val_label_folder, or neither")
        self.val_image_folder = val_images and files.folder("val_image_folder", val_images, roots)
        self.val_label_folder = val_labels and files.folder("val_label_folder", val_labels, roots)
        width = fields.get_int(form, "resize_image_width", None, lo=1, hi=MAX_SIDE)
        height = fields.get_int(form, "resize_image_height", None, lo=1, hi=MAX_SIDE)
        if (width is None) != (height is None):
            raise ValueError("give both resize_image_width and resize_image_height, or neither")
        self.resize_image_width, self.resize_image_height = width, height
        self.max_bboxes = fields.get_int(form, "max_bboxes", None, lo=1, hi=MAX_BOXES)
        custom = fields.get_str(form, "custom_classes")
        self.custom_classes = (
            [c.strip().lower() for c in custom.split(",") if c.strip()] if custom else None
        )
        if self.custom_classes is not None and len(set(self.custom_classes)) != len(
            self.custom_classes
        ):
            raise ValueError(f"custom_classes {custom!r} names a class twice")
        self.labels: list[str] = list(self.custom_classes or [])
        self._splits: dict[str, list[Entry]] | None = None

    # --- itemizing -------------------------------------------------------------------------

    def _scan(self, image_folder: str, label_folder: str, prefix: str) -> list[list[Any]]:
        """[[image, objects or the reason there are none], ...] for a pair of folders."""
        roots = self.data_roots
        images = files.by_stem(
            image_folder,
            files.list_files(image_folder, roots, SUPPORTED_EXTENSIONS),
            f"{prefix}_image_folder",
        )
        if not images:
            raise ValueError(f"{prefix}_image_folder {image_folder!r} holds no images")
        labels = files.by_stem(
            label_folder, files.list_files(label_folder, roots, (".txt",)), f"{prefix}_label_folder"
        )
        if not labels:
            raise ValueError(f"{prefix}_label_folder {label_folder!r} holds no .txt label files")
        found: list[list[Any]] = []
        for stem in sorted(images):
            if stem not in labels:
                found.append([images[stem], f"no label file {stem}.txt in {label_folder!r}"])
                continue
            try:
                found.append([images[stem], kitti.read_objects(labels[stem])])
            except (OSError, ValueError) as exc:  # skipped and counted when encoded
                found.append([images[stem], str(exc)])
        return found

    def _ensure_splits(self) -> dict[str, list[Entry]]:
        if self._splits is not None:
            return self._splits
        train = self._scan(self.train_image_folder, self.train_label_folder, "train")
        val: list[list[Any]] = []
        if self.val_image_folder and self.val_label_folder:
            val = self._scan(self.val_image_folder, self.val_label_folder, "val")
            train, _ = files.split_val(train, 0, self.seed, "detection")  # shuffled, all kept
        else:
            train, val = files.split_val(train, self.folder_pct_val or 0, self.seed, "detection")
        if self.custom_classes is None:
            kinds = {o[0] for _, objs in train + val if isinstance(objs, list) for o in objs}
            self.labels = sorted(kinds)
        classes = {name: index for index, name in enumerate(self.labels)}
        most = max(
            (len(kitti.to_boxes(o, classes)) for _, o in train + val if isinstance(o, list)),
            default=0,
        )
        rows = self.max_bboxes or max(most, 1)

        def entries(items: list[list[Any]]) -> list[Entry]:
            out: list[Entry] = []
            for path, objects in items:
                boxes = kitti.to_boxes(objects, classes) if isinstance(objects, list) else objects
                out.append([path, boxes, rows])
            return out

        self._splits = {
            constants.TRAIN_DB: entries(train),
            constants.VAL_DB: entries(val),
            constants.TEST_DB: [],
        }
        return self._splits

    @override
    def itemize_entries(self, stage: str) -> list[Entry]:
        """Return ``[[image, [[class, x1, y1, x2, y2], ...], rows], ...]`` for a stage."""
        if stage not in constants.STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {constants.STAGES}")
        return list(self._ensure_splits()[stage])

    def get_labels(self) -> list[str]:
        """Return the class names (custom_classes, or the object types found, sorted)."""
        self._ensure_splits()
        return list(self.labels)

    # --- encoding --------------------------------------------------------------------------

    @override
    def encode_entry(self, entry: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return (HWC uint8 image, float32 (rows, 5) boxes), boxes scaled with the image."""
        if not isinstance(entry, list | tuple) or len(entry) != 3 or not isinstance(entry[0], str):
            raise ValueError(f"entry must be [image, boxes, rows], not {entry!r}")
        path, boxes, rows = entry
        if isinstance(boxes, str):
            raise ValueError(boxes)  # the reason found when itemizing
        if len(boxes) > rows:
            raise ValueError(
                f"image {path!r} has {len(boxes)} objects, more than max_bboxes ({rows})"
            )
        channels = {"none": None, "L": 1, "RGB": 3}[self.channel_conversion]
        image = load_image(confine(path, self.data_roots), channels)
        label = np.array([*boxes, *([PAD_ROW] * (rows - len(boxes)))], np.float32).reshape(rows, 5)
        if self.resize_image_width is None or self.resize_image_height is None:
            return image_to_array(image, channels), label
        width, height = image.size
        feature = resize_image(image, self.resize_image_height, self.resize_image_width, channels)
        scale = np.array([self.resize_image_width / width, self.resize_image_height / height])
        used = label[:, 0] >= 0
        label[used, 1:] *= np.tile(scale, 2).astype(np.float32)
        return feature, label

    # --- metadata and forms ----------------------------------------------------------------

    @staticmethod
    @override
    def get_category() -> str:
        return "Images"

    @staticmethod
    @override
    def get_id() -> str:
        return "image-object-detection"

    @staticmethod
    @override
    def get_title() -> str:
        return "Object Detection"

    @staticmethod
    @override
    def get_dataset_form() -> Any:
        from .forms import DatasetForm  # Flask-WTF only where a form is rendered

        return DatasetForm()

    @staticmethod
    @override
    def get_dataset_template(form: Any) -> tuple[str, dict[str, Any]]:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), TEMPLATE)
        with open(path) as f:
            return f.read(), {"form": form}

    @staticmethod
    @override
    def get_inference_form() -> Any:
        # As in DIGITS: detection models are tested with images, no inference dataset.
        return None
