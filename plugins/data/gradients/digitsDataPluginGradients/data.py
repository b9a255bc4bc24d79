"""Image gradients: a synthetic regression dataset, built from a seed alone (no files)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from digits.extensions.data import fields
from digits.extensions.data.interface import DataIngestionInterface
from digits.utils import constants, override, subclass

MAX_SIDE = 1024
MAX_COUNT = 1_000_000
STAGE_CODES = {constants.TRAIN_DB: 0, constants.VAL_DB: 1, constants.TEST_DB: 2}

# [stage code, index] for a random image; [gradient x, gradient y] floats at inference.
Entry = list[int] | list[float]


def _template(name: str) -> str:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", name)) as f:
        return f.read()


def gradient_image(gx: float, gy: float, height: int, width: int) -> np.ndarray:
    """A (height, width, 1) uint8 image whose intensity rises by gx*255 across x, gy*255 down y."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    image = gx * 255 / width * (xx - width / 2) + gy * 255 / height * (yy - height / 2) + 127.5
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)[:, :, np.newaxis]


@subclass
class DataIngestion(DataIngestionInterface):
    """Synthetic images whose label is the float32 gradient (x, y), each in [-0.5, 0.5)."""

    def __init__(self, is_inference_db: bool = False, **kwargs: Any) -> None:
        """Validate the form (DIGITS's field names); ValueError names the bad value."""
        kwargs.pop("data_roots", None)  # no files are read
        super().__init__(is_inference_db=is_inference_db, **kwargs)
        form = kwargs
        self.image_width = fields.get_int(form, "image_width", 32, lo=1, hi=MAX_SIDE)
        self.image_height = fields.get_int(form, "image_height", 32, lo=1, hi=MAX_SIDE)
        self.train_image_count = fields.get_int(form, "train_image_count", 1000, lo=0, hi=MAX_COUNT)
        self.val_image_count = fields.get_int(form, "val_image_count", 250, lo=0, hi=MAX_COUNT)
        self.test_image_count = fields.get_int(form, "test_image_count", 0, lo=0, hi=MAX_COUNT)
        self.seed = fields.get_int(form, "seed", 0, lo=0)
        self.gradient_x = fields.get_float(form, "gradient_x", None, lo=-0.5, hi=0.5)
        self.gradient_y = fields.get_float(form, "gradient_y", None, lo=-0.5, hi=0.5)
        if (self.gradient_x is None) != (self.gradient_y is None):
            raise ValueError("give both gradient_x and gradient_y, or neither")
        if not is_inference_db and not self.train_image_count:
            raise ValueError("train_image_count must be at least 1")

    @override
    def itemize_entries(self, stage: str) -> list[Entry]:
        """Return ``[[stage code, index], ...]``; at inference, the given gradient if any."""
        if stage not in STAGE_CODES:
            raise ValueError(f"unknown stage {stage!r}; use one of {tuple(STAGE_CODES)}")
        if self.is_inference_db:
            if stage != constants.TEST_DB:
                return []
            if self.gradient_x is not None and self.gradient_y is not None:
                return [[self.gradient_x, self.gradient_y]]
        count = {
            constants.TRAIN_DB: self.train_image_count,
            constants.VAL_DB: self.val_image_count,
            constants.TEST_DB: self.test_image_count,
        }[stage]
        return [[STAGE_CODES[stage], i] for i in range(count or 0)]

    def gradient(self, entry: Any) -> tuple[float, float]:
        """The (x, y) gradient of an entry: given, or drawn from (seed, stage, index)."""
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"entry must be [stage code, index] or [gx, gy], not {entry!r}")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in entry):
            rng = np.random.default_rng([self.seed or 0, *entry])
            gx, gy = rng.random(2) - 0.5
            return float(gx), float(gy)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry):
            return float(entry[0]), float(entry[1])
        raise ValueError(f"entry must be [stage code, index] or [gx, gy], not {entry!r}")

    @override
    def encode_entry(self, entry: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return ((H, W, 1) uint8 image, float32 (2,) gradient)."""
        gx, gy = self.gradient(entry)
        assert self.image_height is not None and self.image_width is not None
        image = gradient_image(gx, gy, self.image_height, self.image_width)
        return image, np.array([gx, gy], np.float32)

    @staticmethod
    @override
    def get_category() -> str:
        return "Images"

    @staticmethod
    @override
    def get_id() -> str:
        return "image-gradients"

    @staticmethod
    @override
    def get_title() -> str:
        return "Gradients"

    @staticmethod
    @override
    def get_default_visibility() -> bool:
        # A demonstration dataset: listed, but DIGITS kept it out of the menu by default.
        return False

    @staticmethod
    @override
    def get_dataset_form() -> Any:
        from .forms import DatasetForm  # Flask-WTF only where a form is rendered

        return DatasetForm()

    @staticmethod
    @override
    def get_dataset_template(form: Any) -> tuple[str, dict[str, Any]]:
        return _template("dataset_template.html"), {"form": form}

    @staticmethod
    @override
    def get_inference_form() -> Any:
        from .forms import InferenceForm

        return InferenceForm()

    @staticmethod
    @override
    def get_inference_template(form: Any) -> tuple[str, dict[str, Any]]:
        return _template("inference_template.html"), {"form": form}
