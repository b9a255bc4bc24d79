"""The Sunnybrook data extension: one sample per inner contour, the slice and its LV mask."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from digits.extensions.data import fields
from digits.extensions.data.interface import DataIngestionInterface
from digits.paths import confine
from digits.utils import constants, override, subclass
from digits.utils.constants import COLOR_PALETTE_ATTRIBUTE

from . import layout

DATASET_TEMPLATE = "templates/dataset_template.html"
INFERENCE_TEMPLATE = "templates/inference_template.html"
CHANNEL_CONVERSIONS = ("L", "RGB")
CLASS_LABELS = ["background", "left ventricle"]
# Class 0 (background) black, class 1 (left ventricle) white, as PIL's flat 256-colour palette.
PALETTE = [0, 0, 0, 255, 255, 255] + [0] * (254 * 3)

# A training entry: [contour file, DICOM slice or None when it could not be found];
# an inference entry for a bare DICOM file: its path.
Entry = list[str | None] | str


def _roots(data_roots: Sequence[str] | str | None) -> list[str]:
    if data_roots is None:
        return []
    if isinstance(data_roots, str):
        return [r for r in data_roots.split(os.pathsep) if r.strip()]
    return [str(r) for r in data_roots if str(r).strip()]


def _template(name: str) -> str:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)) as f:
        return f.read()


@subclass
class DataIngestion(DataIngestionInterface):
    """Sunnybrook Cardiac MR: DICOM slices and expert inner contours -> LV segmentation samples.

    ``data_roots`` (the service's DIGITS_DATA_ROOTS) confines every path the form names.
    """

    def __init__(
        self,
        is_inference_db: bool = False,
        data_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the form (DIGITS's field names); ValueError names the bad value."""
        kwargs.setdefault("channel_conversion", "L")
        kwargs.setdefault("folder_pct_val", 10)
        kwargs.setdefault("seed", 0)
        super().__init__(is_inference_db=is_inference_db, **kwargs)
        self.data_roots = _roots(data_roots)
        form = kwargs
        self.channel_conversion = self._channels(form)
        self.folder_pct_val = fields.get_int(form, "folder_pct_val", 10, lo=0, hi=100)
        self.seed = fields.get_int(form, "seed", 0, lo=0)
        fields.get_choice(form, "encoding", "none", ("none", "png"))
        self.labels = list(CLASS_LABELS)
        # DIGITS's plugins keep the class names and palette in userdata, for the views.
        self.userdata["class_labels"] = list(CLASS_LABELS)
        self.userdata[COLOR_PALETTE_ATTRIBUTE] = list(PALETTE)
        self._splits: dict[str, list[Entry]] | None = None
        if is_inference_db:
            self.test_image_file = fields.get_str(form, "test_image_file")
            record = fields.get_str(form, "validation_record")
            self.validation_record = None if record in (None, "none") else record
            if self.test_image_file is None and self.validation_record is None:
                raise ValueError("give test_image_file (a DICOM file) or a validation_record")
        # Folders are needed to build a dataset, and for a validation record at inference.
        self.image_folder = self._folder(form, "image_folder", is_inference_db)
        self.contour_folder = self._folder(form, "contour_folder", is_inference_db)

    @staticmethod
    def _channels(form: dict[str, Any]) -> str:
        value = form.get("channel_conversion")
        value = "L" if fields.is_blank(value) else value
        if value not in CHANNEL_CONVERSIONS:
            raise ValueError(
                f"channel_conversion {value!r} is not supported; use one of {CHANNEL_CONVERSIONS}"
            )
        return value

    def _folder(self, form: dict[str, Any], name: str, optional: bool) -> str | None:
        value = fields.get_str(form, name)
        if value is None:
            if optional:
                return None
            raise ValueError(f"{name} is required")
        path = confine(value, self.data_roots)
        if not path.is_dir():
            raise ValueError(f"{name} {value!r} is not an existing directory")
        return str(path)

    # --- itemizing -------------------------------------------------------------------------

    def _entries(self) -> list[Entry]:
        """Every contour with its slice, sorted then shuffled by the seed (a fixed order)."""
        if self.image_folder is None or self.contour_folder is None:
            raise ValueError("image_folder and contour_folder are required")
        contours = layout.find_contours(self.contour_folder, self.data_roots)
        if not contours:
            raise ValueError(
                f"contour_folder {self.contour_folder!r} holds no "
                "IM-0001-NNNN-icontour-manual.txt files"
            )
        entries: list[Entry] = []
        for contour in contours:
            case, number = layout.contour_case(contour, self.contour_folder)
            try:
                image: str | None = layout.find_image(self.image_folder, case, number)
            except ValueError:
                image = None  # encode_entry reports it: the entry is skipped and counted
            entries.append([contour, image])
        random.Random(f"{self.seed}:sunnybrook").shuffle(entries)
        return entries

    def _ensure_splits(self) -> dict[str, list[Entry]]:
        if self._splits is None:
            entries = self._entries()
            # As in DIGITS: the first floor(n * pct / 100) shuffled contours are validation.
            n_val = math.floor(len(entries) * (self.folder_pct_val or 0) / 100)
            self._splits = {
                constants.TRAIN_DB: entries[n_val:],
                constants.VAL_DB: entries[:n_val],
                constants.TEST_DB: [],
            }
        return self._splits

    def validation_entries(self) -> list[Entry]:
        """The validation contours, in the order the inference form numbers them."""
        return list(self._ensure_splits()[constants.VAL_DB])

    def _inference_entries(self) -> list[Entry]:
        if self.test_image_file is not None:
            path = confine(self.test_image_file, self.data_roots)
            if not path.is_file():
                raise ValueError(
                    f"test_image_file {self.test_image_file!r} is not an existing file"
                )
            return [str(path)]
        records = self.validation_entries()
        try:
            index = int(str(self.validation_record))
        except ValueError:
            index = -1
        if not 0 <= index < len(records):
            raise ValueError(
                f"validation_record {self.validation_record!r} is not a record of the "
                f"validation set (0..{len(records) - 1})"
            )
        return [records[index]]

    @override
    def itemize_entries(self, stage: str) -> list[Entry]:
        """Return ``[[contour, dicom], ...]`` for a stage; at inference, the one test entry."""
        if stage not in constants.STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {constants.STAGES}")
        if self.is_inference_db:
            return self._inference_entries() if stage == constants.TEST_DB else []
        return list(self._ensure_splits()[stage])

    def get_labels(self) -> list[str]:
        """Return the class names: background and left ventricle."""
        return list(CLASS_LABELS)

    # --- encoding --------------------------------------------------------------------------

    def _feature(self, path: str) -> np.ndarray:
        pixels = layout.read_dicom(confine(path, self.data_roots))
        return np.ascontiguousarray(layout.to_channels(pixels, self.channel_conversion, path))

    @override
    def encode_entry(self, entry: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (HWC uint8/uint16 slice, (H, W) uint8 mask: 1 inside the contour, else 0).

        A bare DICOM path (inference) gives (slice, None).
        """
        if isinstance(entry, str):
            return self._feature(entry), None
        if not isinstance(entry, list | tuple) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(f"entry must be [contour file, DICOM file or None], not {entry!r}")
        contour, image = entry
        contour_path = str(confine(contour, self.data_roots))
        if image is None:
            if self.image_folder is None or self.contour_folder is None:
                raise ValueError(f"contour {contour!r} has no DICOM slice")
            case, number = layout.contour_case(contour_path, self.contour_folder)
            image = layout.find_image(self.image_folder, case, number)  # raises, saying why
        feature = self._feature(image)
        points = layout.read_contour(contour_path)
        height, width = feature.shape[:2]
        return feature, layout.rasterize(points, height, width)

    # --- metadata and forms ----------------------------------------------------------------

    @staticmethod
    @override
    def get_category() -> str:
        return "Images"

    @staticmethod
    @override
    def get_id() -> str:
        return "image-sunnybrook"

    @staticmethod
    @override
    def get_title() -> str:
        return "Sunnybrook LV Segmentation"

    @staticmethod
    @override
    def get_dataset_form() -> Any:
        from .forms import DatasetForm  # Flask-WTF only where a form is rendered

        return DatasetForm()

    @staticmethod
    @override
    def get_dataset_template(form: Any) -> tuple[str, dict[str, Any]]:
        return _template(DATASET_TEMPLATE), {"form": form}

    @override
    def get_inference_form(self) -> Any:  # type: ignore[override]
        """Return the inference form, its validation records listed (as in DIGITS, per dataset)."""
        from .forms import InferenceForm, SelectChoice

        form = InferenceForm()
        choices = [SelectChoice("none", "- select record -")]
        for index, (contour, _image) in enumerate(self.validation_entries()):
            case, number = layout.contour_case(str(contour), str(self.contour_folder))
            choices.append(SelectChoice(str(index), f"{case} image {number}"))
        form.validation_record.choices = choices
        return form

    @staticmethod
    @override
    def get_inference_template(form: Any) -> tuple[str, dict[str, Any]]:
        return _template(INFERENCE_TEMPLATE), {"form": form}
