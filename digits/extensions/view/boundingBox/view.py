"""The Bounding Boxes view: an output of ``[left, top, right, bottom, confidence]`` rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config_common import choice, number
from ..images import data_uri, gray_to_rgb
from ..interface import VisualizationInterface
from ..rendering import read_template

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
OUTPUT_NAMES = ("bbox-list", "bbox_list", "boxes")  # DIGITS's detection networks: "bbox-list"


def boxes_of(value: Any) -> np.ndarray:
    """The boxes of an output as (N, 5) float: rows of zeros (padding) are dropped."""
    arr = np.asarray(value, np.float64)
    arr = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 2 else arr
    arr = arr[None] if arr.ndim == 1 and arr.size else arr
    if arr.size == 0:
        return np.zeros((0, 5))
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(
            f"output of shape {np.shape(value)} is not a list of [left, top, right, bottom"
            "(, confidence)] rows"
        )
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
    return arr[np.any(arr[:, :4] != 0, axis=1)]


class Visualization(VisualizationInterface):
    """Draws each box above the confidence threshold over the input image."""

    def __init__(self, dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.color = COLORS[choice(kwargs, "box_color", tuple(COLORS), "red")]
        self.line_width = int(number(kwargs, "line_width", 2, 1, 20))
        self.threshold = number(kwargs, "threshold", 0.0, 0.0, 1e9)
        self.total = 0

    @staticmethod
    def get_config_form() -> Any:
        """A form with the box colour, line width and confidence threshold."""
        from .forms import ConfigForm

        return ConfigForm()

    @staticmethod
    def get_config_template(form: Any) -> tuple[str, dict[str, Any]]:
        """The config form's template."""
        return read_template(__file__, "config_template.html"), {"form": form}

    @staticmethod
    def get_id() -> str:
        """The id, as in DIGITS."""
        return "image-bounding-boxes"

    @staticmethod
    def get_title() -> str:
        """The title, as in DIGITS."""
        return "Bounding boxes"

    def get_header_template(self) -> tuple[str, dict[str, Any]]:
        """How many boxes were found over all inputs."""
        return read_template(__file__, "header_template.html"), {"total": self.total}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """The image with its boxes, and the boxes as a table."""
        return read_template(__file__, "view_template.html"), data

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> dict[str, Any]:
        """Draw the boxes (from "bbox-list", or the only output) over the input."""
        from PIL import Image, ImageDraw

        name = next((n for n in OUTPUT_NAMES if n in inference_data), None)
        if name is None and len(inference_data) != 1:
            raise ValueError(f"no bbox-list output among {', '.join(inference_data) or 'none'}")
        boxes = boxes_of(inference_data[name or next(iter(inference_data))])
        boxes = boxes[boxes[:, 4] >= self.threshold]
        if input_data is None:
            raise ValueError("the bounding boxes view needs the input image")
        pil = Image.fromarray(gray_to_rgb(input_data))
        draw = ImageDraw.Draw(pil)
        rows = []
        for left, top, right, bottom, conf in boxes.tolist():
            x0, x1 = sorted((left, right))
            y0, y1 = sorted((top, bottom))
            draw.rectangle([x0, y0, x1, y1], outline=self.color, width=self.line_width)
            rows.append({"box": [round(v, 1) for v in (x0, y0, x1, y1)], "confidence": conf})
        self.total += len(rows)
        return {"input_id": str(input_id), "image": data_uri(np.asarray(pil)), "boxes": rows}
