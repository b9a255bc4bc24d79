"""The Image Segmentation view: each pixel's class as a colour over the input, and a legend."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config_common import choice, first_output, number
from ..images import data_uri, gray_to_rgb, hex_color, palette
from ..interface import VisualizationInterface
from ..rendering import read_template

COLORMAPS = ("dataset", "generated")
PALETTE_KEYS = ("color_palette", "palette")  # DIGITS kept ``color_palette`` in userdata


def class_map(value: Any) -> np.ndarray:
    """An output as an (H, W) int array of classes: argmax of per-pixel scores, or as given."""
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] > 1:
        return np.argmax(arr, axis=2).astype(np.int32)
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"output of shape {arr.shape} is not an HxW or HxWxclasses map")
    return np.rint(arr).astype(np.int32)


def _resize_nearest(classes: np.ndarray, height: int, width: int) -> np.ndarray:
    if classes.shape == (height, width):
        return classes
    rows = np.arange(height) * classes.shape[0] // height
    cols = np.arange(width) * classes.shape[1] // width
    return classes[rows[:, None], cols[None, :]]


def dataset_palette(dataset: Any) -> np.ndarray | None:
    """The dataset's palette as (n, 3) uint8, if its form or manifest has one."""
    for source in (getattr(dataset, "extra", {}), getattr(dataset, "extension_userdata", {})):
        for key in PALETTE_KEYS:
            value = (source or {}).get(key)
            if value:
                arr = np.asarray(value, np.int64).reshape(-1)
                if arr.size % 3 or arr.min() < 0 or arr.max() > 255:
                    raise ValueError(f"dataset {key} is not a list of RGB triples 0..255")
                return arr.reshape(-1, 3).astype(np.uint8)
    return None


class Visualization(VisualizationInterface):
    """Colours each pixel by its predicted class, blended over the input."""

    def __init__(self, dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.colormap = choice(kwargs, "colormap", COLORMAPS, "dataset")
        self.opacity = number(kwargs, "opacity", 0.5, 0.0, 1.0)
        self.output = str(kwargs.get("output") or "")
        self.palette = dataset_palette(self.dataset) if self.colormap == "dataset" else None
        self.labels = list(self.dataset.get_labels()) or list(
            self.dataset.extra.get("class_labels") or []
        )
        self.num_classes = len(self.labels)
        self.seen: dict[int, int] = {}  # class -> pixels, over every input

    def _colors(self, n: int) -> np.ndarray:
        generated = palette(n)
        if self.palette is not None:
            k = min(n, len(self.palette))
            generated[:k] = self.palette[:k]
        return generated

    def label(self, index: int) -> str:
        """The name of class ``index``."""
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    @staticmethod
    def get_config_form() -> Any:
        """A form with the colour map and the opacity."""
        from .forms import ConfigForm

        return ConfigForm()

    @staticmethod
    def get_config_template(form: Any) -> tuple[str, dict[str, Any]]:
        """The config form's template."""
        return read_template(__file__, "config_template.html"), {"form": form}

    @staticmethod
    def get_id() -> str:
        """The id, as in DIGITS."""
        return "image-segmentation"

    @staticmethod
    def get_title() -> str:
        """The title, as in DIGITS."""
        return "Image Segmentation"

    def get_header_template(self) -> tuple[str, dict[str, Any]]:
        """The legend: every class, its colour and how many pixels were given it."""
        colors = self._colors(self.num_classes)
        legend = [
            {
                "index": i,
                "label": self.label(i),
                "color": hex_color(colors[i]),
                "pixels": self.seen.get(i, 0),
            }
            for i in range(self.num_classes)
        ]
        return read_template(__file__, "header_template.html"), {"legend": legend}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """The overlay, the class map and, when known, the ground truth."""
        return read_template(__file__, "view_template.html"), data

    def _colored(self, classes: np.ndarray) -> np.ndarray:
        return self._colors(max(self.num_classes, int(classes.max(initial=0)) + 1))[classes]

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> dict[str, Any]:
        """The class map, coloured, over the input; the classes found and their pixel counts."""
        _name, value = first_output(inference_data, self.output)
        scores = np.asarray(value)
        if scores.ndim == 3 and scores.shape[2] > 1:
            self.num_classes = max(self.num_classes, scores.shape[2])
        classes = class_map(scores)
        if classes.min(initial=0) < 0:
            raise ValueError(f"class map has a negative class {int(classes.min())}")
        self.num_classes = max(self.num_classes, int(classes.max(initial=0)) + 1)
        image = None if input_data is None else gray_to_rgb(input_data)
        if image is not None:
            classes = _resize_nearest(classes, image.shape[0], image.shape[1])
        colored = self._colored(classes)
        if image is None:
            overlay = colored
        else:
            blend = image.astype(np.float32) * (1 - self.opacity) + colored * self.opacity
            fg = (classes > 0)[:, :, None]  # the background (class 0) leaves the input as it is
            overlay = np.where(fg, np.rint(blend), image).astype(np.uint8)
        counts = np.bincount(classes.reshape(-1))
        found = []
        for i in np.nonzero(counts)[0].tolist():
            self.seen[i] = self.seen.get(i, 0) + int(counts[i])
            found.append({"index": i, "label": self.label(i), "pixels": int(counts[i])})
        truth = None
        if ground_truth is not None and np.ndim(ground_truth) >= 2:
            truth = data_uri(self._colored(class_map(ground_truth)))
        return {
            "input_id": str(input_id),
            "overlay": data_uri(overlay),
            "class_map": data_uri(colored),
            "ground_truth": truth,
            "classes": found,
        }
