"""Draws the predicted gradient vector as an arrow from the centre of the input image."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from digits.extensions.view.images import data_uri, gray_to_rgb
from digits.extensions.view.interface import VisualizationInterface

HERE = Path(__file__).parent
COLORS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
SCALE_UP = 4  # small synthetic images are enlarged so the arrow is visible


def _template(name: str) -> str:
    return (HERE / "templates" / name).read_text(encoding="utf-8")


class Visualization(VisualizationInterface):
    """The gradients view (DIGITS tutorial style)."""

    def __init__(self, dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        color = str(kwargs.get("arrow_color") or "red").lower()
        if color not in COLORS:
            raise ValueError(f"arrow_color {color!r} is not one of {', '.join(COLORS)}")
        self.color = COLORS[color]
        try:
            self.arrow_size = float(kwargs.get("arrow_size") or 0.0)
        except (TypeError, ValueError):
            raise ValueError(f"arrow_size {kwargs.get('arrow_size')!r} is not a number") from None
        if self.arrow_size < 0 or not math.isfinite(self.arrow_size):
            raise ValueError(f"arrow_size {self.arrow_size} must be a finite number >= 0")
        self.count = 0

    @staticmethod
    def get_config_form() -> Any:
        """The arrow's options."""
        from .forms import ConfigForm

        return ConfigForm()

    @staticmethod
    def get_config_template(form: Any) -> tuple[str, dict[str, Any]]:
        """The config form's template."""
        return _template("config_template.html"), {"form": form}

    @staticmethod
    def get_id() -> str:
        """The view's id."""
        return "image-gradients-view"

    @staticmethod
    def get_title() -> str:
        """The view's title."""
        return "Gradients"

    def get_header_template(self) -> tuple[str, dict[str, Any]]:
        """A line about the arrows, with the plugin's stylesheet."""
        return _template("header_template.html"), {"count": self.count}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """The image with its arrow, and the vector."""
        return _template("view_template.html"), data

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> dict[str, Any]:
        """Draw (dx, dy), the first two values of the only output, as an arrow."""
        vector = np.asarray(next(iter(inference_data.values())), np.float64).reshape(-1)
        if vector.size < 2:
            raise ValueError(f"expected a gradient (dx, dy), got an output of {vector.size} values")
        dx, dy = float(vector[0]), float(vector[1])
        rgb = gray_to_rgb(input_data)
        height, width = rgb.shape[:2]
        pil = Image.fromarray(rgb).resize((width * SCALE_UP, height * SCALE_UP), Image.NEAREST)
        cx, cy = pil.width / 2, pil.height / 2
        norm = math.hypot(dx, dy)
        scale = (
            self.arrow_size * SCALE_UP
            if self.arrow_size
            else (0.45 * min(pil.size) / norm if norm > 0 else 0.0)
        )
        tip = (cx + dx * scale, cy + dy * scale)
        draw = ImageDraw.Draw(pil)
        draw.line([(cx, cy), tip], fill=self.color, width=2)
        if norm > 0:
            angle = math.atan2(dy, dx)
            for side in (-0.5, 0.5):
                a = angle + math.pi + side
                draw.line(
                    [tip, (tip[0] + 6 * math.cos(a), tip[1] + 6 * math.sin(a))],
                    fill=self.color,
                    width=2,
                )
        self.count += 1
        truth = None
        if ground_truth is not None and np.size(ground_truth) >= 2:
            t = np.asarray(ground_truth, np.float64).reshape(-1)
            truth = [round(float(t[0]), 4), round(float(t[1]), 4)]
        return {
            "input_id": str(input_id),
            "image": data_uri(np.asarray(pil)),
            "gradients": [round(dx, 4), round(dy, 4)],
            "ground_truth": truth,
        }
