"""The Raw Data view: each output's shape and values (large arrays are summarized)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config_common import number
from ..interface import VisualizationInterface
from ..rendering import read_template

MAX_VALUES = 10_000


def _values(value: Any, limit: int) -> dict[str, Any]:
    arr = np.asarray(value)
    flat = arr.reshape(-1)
    shown = flat[:limit]
    if arr.dtype.kind == "f":
        text = ", ".join(f"{v:.6g}" for v in shown.tolist())
    else:
        text = ", ".join(str(v) for v in shown.tolist())
    more = flat.size - shown.size
    summary = {"min": "", "max": "", "mean": ""}
    if arr.dtype.kind in "biuf" and flat.size:
        summary = {"min": f"{flat.min():.6g}", "max": f"{flat.max():.6g}"}
        summary["mean"] = f"{flat.astype(np.float64).mean():.6g}"
    return {
        "shape": "x".join(map(str, arr.shape)) or "scalar",
        "dtype": str(arr.dtype),
        "text": text + (f", ... ({more} more)" if more > 0 else ""),
        **summary,
    }


class Visualization(VisualizationInterface):
    """Shows the raw outputs of the network for each input."""

    def __init__(self, dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.max_values = int(number(kwargs, "max_values", 100, 1, MAX_VALUES))

    @staticmethod
    def get_config_form() -> Any:
        """A form with the number of values shown per output."""
        from .forms import ConfigForm

        return ConfigForm()

    @staticmethod
    def get_config_template(form: Any) -> tuple[str, dict[str, Any]]:
        """The config form's template."""
        return read_template(__file__, "config_template.html"), {"form": form}

    @staticmethod
    def get_id() -> str:
        """The id, as in DIGITS."""
        return "all-outputs"

    @staticmethod
    def get_title() -> str:
        """The title, as in DIGITS."""
        return "Raw Data"

    def get_header_template(self) -> tuple[str, dict[str, Any]]:
        """A one-line explanation."""
        return read_template(__file__, "header_template.html"), {}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """A table of the outputs."""
        return read_template(__file__, "view_template.html"), data

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> dict[str, Any]:
        """Each output as shape, dtype, summary statistics and its first values."""
        outputs = {str(k): _values(v, self.max_values) for k, v in inference_data.items()}
        truth = None if ground_truth is None else _values(ground_truth, self.max_values)
        return {"input_id": str(input_id), "outputs": outputs, "ground_truth": truth}
