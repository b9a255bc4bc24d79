"""The built-in image segmentation data extension: feature images and label images of classes."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digits.paths import confine
from digits.utils import constants, override, subclass
from digits.utils.constants import COLOR_PALETTE_ATTRIBUTE
from digits.utils.image import SUPPORTED_EXTENSIONS, image_to_array, load_image

from .. import fields, files
from ..interface import DataIngestionInterface

logger = logging.getLogger(__name__)

TEMPLATE = "template.html"
CHANNEL_CONVERSIONS = ("none", "L", "RGB")
COLORMAP_METHODS = ("label", "textfile")
MAX_LABEL_FILE_BYTES = 1 << 20

# [feature image, label image or None when no label image has the feature's name]
Entry = list[str | None]


def grey_palette() -> list[int]:
    """The palette of a grayscale label image: class i is (i, i, i)."""
    return [v for i in range(256) for v in (i, i, i)]


def read_colormap(text: str, source: str) -> list[int]:
    """Parse ``r g b`` lines (class i on line i+1) into a flat 768-entry palette."""
    palette: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rgb = [int(p) for p in parts]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError(f"{source} line {number}: expected 'r g b' (0..255), got {line!r}")
        palette += rgb
    if not palette:
        raise ValueError(f"{source} holds no colours; give one 'r g b' line per class")
    if len(palette) > 768:
        raise ValueError(f"{source} has {len(palette) // 3} colours; at most 256 classes")
    return palette


def _read_text(path: str, roots: Sequence[str], field: str) -> str:
    resolved = confine(path, roots)
    if not resolved.is_file():
        raise ValueError(f"{field} {path!r} is not an existing file")
    if resolved.stat().st_size > MAX_LABEL_FILE_BYTES:
        raise ValueError(f"{field} {path!r} is larger than {MAX_LABEL_FILE_BYTES} bytes")
    try:
        return resolved.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{field} {path!r} is not UTF-8 text: {exc}") from None


@subclass
class DataIngestion(DataIngestionInterface):
    """Segmentation: each feature image has a label image of the same name holding class indices.

    Label images are single-channel (paletted "P" or grayscale "L": the pixel value is the
    class) with colormap_method "label", or RGB mapped through a colour map text file with
    "textfile". Samples are (HWC uint8 image, (H, W) uint8 class indices).
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
        self.folder_pct_val = fields.get_int(form, "folder_pct_val", 10, lo=0, hi=100)
        self.channel_conversion = self._choice(
            form, "channel_conversion", "none", CHANNEL_CONVERSIONS
        )
        self.colormap_method = fields.get_choice(form, "colormap_method", "label", COLORMAP_METHODS)
        self.encoding = fields.get_choice(form, "encoding", "none", ("none", "png"))
        self.feature_folder = files.folder(
            "feature_folder", fields.get_str(form, "feature_folder"), roots
        )
        label_folder = fields.get_str(form, "label_folder")
        self.label_folder = files.folder("label_folder", label_folder, roots)
        self.has_val_folder = fields.get_bool(form, "has_val_folder")
        self.validation_feature_folder = self.validation_label_folder = None
        if self.has_val_folder:
            for name in ("validation_feature_folder", "validation_label_folder"):
                setattr(self, name, files.folder(name, fields.get_str(form, name), roots))
        self.class_labels_file = fields.get_str(form, "class_labels_file")
        self.colormap_text_file = fields.get_str(form, "colormap_text_file")
        self._palette: list[int] | None = None
        if self.colormap_method == "textfile":
            if self.colormap_text_file is None:
                raise ValueError(
                    "colormap_text_file is required when colormap_method is 'textfile'"
                )
            text = _read_text(self.colormap_text_file, roots, "colormap_text_file")
            self._palette = read_colormap(text, "colormap_text_file")
            self._colors = {
                tuple(self._palette[i : i + 3]): i // 3 for i in range(0, len(self._palette), 3)
            }
        self.labels: list[str] = []
        if self.class_labels_file is not None:
            text = _read_text(self.class_labels_file, roots, "class_labels_file")
            self.labels = [line.strip() for line in text.splitlines() if line.strip()]
            if not self.labels:
                raise ValueError(f"class_labels_file {self.class_labels_file!r} holds no labels")
        elif self._palette is not None:
            self.labels = [f"class {i}" for i in range(len(self._palette) // 3)]
        self.userdata["class_labels"] = list(self.labels)
        self._splits: dict[str, list[Entry]] | None = None

    @staticmethod
    def _choice(form: dict[str, Any], name: str, default: str, choices: Sequence[str]) -> str:
        # Case matters here: "L" and "RGB" are PIL modes.
        value = form.get(name)
        if fields.is_blank(value):
            return default
        if value not in choices:
            raise ValueError(f"{name} {value!r} is not supported; use one of {tuple(choices)}")
        return str(value)

    # --- itemizing -------------------------------------------------------------------------

    def _pairs(self, feature_folder: str, label_folder: str, prefix: str) -> list[Entry]:
        roots = self.data_roots
        features = files.by_stem(
            feature_folder,
            files.list_files(feature_folder, roots, SUPPORTED_EXTENSIONS),
            f"{prefix}feature_folder",
        )
        labels = files.by_stem(
            label_folder,
            files.list_files(label_folder, roots, SUPPORTED_EXTENSIONS),
            f"{prefix}label_folder",
        )
        if not features:
            raise ValueError(f"{prefix}feature_folder {feature_folder!r} holds no images")
        if not set(features) & set(labels):
            raise ValueError(
                f"no image of {prefix}feature_folder {feature_folder!r} has a label image of the "
                f"same name in {prefix}label_folder {label_folder!r}"
            )
        unused = len(set(labels) - set(features))
        if unused:
            logger.warning("%d label images of %s have no feature image", unused, label_folder)
        return [[features[stem], labels.get(stem)] for stem in sorted(features)]

    def _ensure_splits(self) -> dict[str, list[Entry]]:
        if self._splits is None:
            pairs = self._pairs(self.feature_folder, self.label_folder, "")
            if self.has_val_folder:
                assert self.validation_feature_folder and self.validation_label_folder
                train, _ = files.split_val(pairs, 0, self.seed, "segmentation")
                val = self._pairs(
                    self.validation_feature_folder, self.validation_label_folder, "validation_"
                )
            else:
                train, val = files.split_val(
                    pairs, self.folder_pct_val or 0, self.seed, "segmentation"
                )
            self._splits = {constants.TRAIN_DB: train, constants.VAL_DB: val, constants.TEST_DB: []}
            # DIGITS's convention: the palette in userdata, PIL's flat 768-value form.
            palette = (list(self._ensure_palette()) + [0] * 768)[:768]
            self.userdata[COLOR_PALETTE_ATTRIBUTE] = palette
        return self._splits

    @override
    def itemize_entries(self, stage: str) -> list[Entry]:
        """Return ``[[feature image, label image], ...]`` for a stage (none for test_db)."""
        if stage not in constants.STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {constants.STAGES}")
        return list(self._ensure_splits()[stage])

    def get_labels(self) -> list[str]:
        """Return the class names (from class_labels_file, or one per colour map line)."""
        return list(self.labels)

    # --- encoding --------------------------------------------------------------------------

    def _first_label_image(self) -> str:
        paths = files.list_files(self.label_folder, self.data_roots, SUPPORTED_EXTENSIONS)
        if not paths:
            raise ValueError(f"label_folder {self.label_folder!r} holds no images")
        return paths[0]

    def _ensure_palette(self) -> list[int]:
        """The palette: the colour map file's, else the first label image's (sorted by name)."""
        if self._palette is None:
            path = self._first_label_image()
            with Image.open(confine(path, self.data_roots)) as image:
                palette = image.getpalette() if image.mode == "P" else None
            palette = grey_palette() if palette is None else palette
            self._palette = (list(palette) + [0] * 768)[:768]
        return self._palette

    def _label(self, path: str) -> np.ndarray:
        resolved = confine(path, self.data_roots)
        try:
            with Image.open(resolved) as image:
                image.load()
                mode, palette = image.mode, image.getpalette() if image.mode == "P" else None
                if self.colormap_method == "textfile":
                    rgb = np.asarray(image.convert("RGB"))
                else:
                    indices = np.asarray(image)
        except (OSError, ValueError) as exc:
            raise ValueError(f"label image {path!r} cannot be read: {exc}") from None
        if self.colormap_method == "textfile":
            return self._from_colors(rgb, path)
        if mode == "P":
            if (list(palette or []) + [0] * 768)[:768] != self._ensure_palette():
                raise ValueError(
                    f"label image {path!r} has a different palette from "
                    f"{os.path.basename(self._first_label_image())!r}; all must share one"
                )
        elif mode not in ("L", "1"):
            raise ValueError(
                f"label image {path!r} is mode {mode!r}; with colormap_method 'label' label images "
                "must be paletted (P) or grayscale (L); for RGB labels use colormap_method "
                "'textfile'"
            )
        return np.ascontiguousarray(indices, dtype=np.uint8)

    def _from_colors(self, rgb: np.ndarray, path: str) -> np.ndarray:
        packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
        packed |= rgb[..., 2].astype(np.uint32)
        keys = np.array([(r << 16) | (g << 8) | b for (r, g, b) in self._colors], np.uint32)
        values = np.array(list(self._colors.values()), np.uint8)
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        known = keys[pos] == packed
        if not known.all():
            y, x = np.argwhere(~known)[0]
            raise ValueError(
                f"label image {path!r} has colour {tuple(int(v) for v in rgb[y, x])} at "
                f"(x={x}, y={y}), which is not in colormap_text_file"
            )
        return np.ascontiguousarray(values[pos])

    @override
    def encode_entry(self, entry: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return (HWC uint8 feature image, (H, W) uint8 class indices)."""
        if not isinstance(entry, list | tuple) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(f"entry must be [feature image, label image], not {entry!r}")
        feature_path, label_path = entry
        if label_path is None:
            raise ValueError(
                f"no label image named {Path(feature_path).stem!r} (any image extension) for "
                f"feature image {feature_path!r}"
            )
        channels = {"none": None, "L": 1, "RGB": 3}[self.channel_conversion]
        image = load_image(confine(feature_path, self.data_roots), channels)
        feature = image_to_array(image, channels)
        label = self._label(label_path)
        if label.shape != feature.shape[:2]:
            raise ValueError(
                f"label image {label_path!r} is {label.shape[1]}x{label.shape[0]} but feature "
                f"image {feature_path!r} is {feature.shape[1]}x{feature.shape[0]}"
            )
        return feature, label

    # --- metadata and forms ----------------------------------------------------------------

    @staticmethod
    @override
    def get_category() -> str:
        return "Images"

    @staticmethod
    @override
    def get_id() -> str:
        return "image-segmentation"

    @staticmethod
    @override
    def get_title() -> str:
        return "Segmentation"

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
        # As in DIGITS: segmentation models are tested with images, no inference dataset.
        return None
