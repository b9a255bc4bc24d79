"""The Image Output view: an HxW, HxWx1 or HxWx3 output shown as an image."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config_common import choice, first_output
from ..images import data_uri
from ..interface import VisualizationInterface
from ..rendering import read_template

CONVERSIONS = ("normalize", "clip")


def output_image(value: Any, conversion: str) -> np.ndarray:
    """An output array as a uint8 image: stretched min..max ("normalize") or clipped to 0..255."""
    arr = np.asarray(value, np.float64)
    arr = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"output of shape {np.shape(value)} is not an HxW or HxWx3 image")
    if conversion == "clip":
        return np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    out = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(np.nan_to_num(out)), 0, 255).astype(np.uint8)


class Visualization(VisualizationInterface):
    """Shows an image-shaped output next to its input."""

    def __init__(self, dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.conversion = choice(kwargs, "pixel_conversion", CONVERSIONS, "normalize")
        self.output = str(kwargs.get("output") or "")

    @staticmethod
    def get_config_form() -> Any:
        """A form with the pixel conversion."""
        from .forms import ConfigForm

        return ConfigForm()

    @staticmethod
    def get_config_template(form: Any) -> tuple[str, dict[str, Any]]:
        """The config form's template."""
        return read_template(__file__, "config_template.html"), {"form": form}

    @staticmethod
    def get_id() -> str:
        """The id, as in DIGITS."""
        return "image-output"

    @staticmethod
    def get_title() -> str:
        """The title, as in DIGITS."""
        return "Image output"

    def get_header_template(self) -> tuple[str, dict[str, Any]]:
        """How pixels were converted."""
        return read_template(__file__, "header_template.html"), {"conversion": self.conversion}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """The input and output images."""
        return read_template(__file__, "view_template.html"), data

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> dict[str, Any]:
        """The output as a PNG data URI, and the input beside it."""
        name, value = first_output(inference_data, self.output)
        image = output_image(value, self.conversion)
        return {
            "input_id": str(input_id),
            "output_name": name,
            "shape": "x".join(map(str, np.shape(value))),
            "input_image": None if input_data is None else data_uri(input_data),
            "output_image": data_uri(image),
        }
