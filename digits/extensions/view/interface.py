"""The visualization plugin interface, with DIGITS's import path, method names and meanings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    """What a view knows of the model's dataset (DIGITS passed the dataset job itself).

    ``extension_userdata`` is the dataset's form (as DIGITS's ``dataset.extension_userdata``);
    ``labels`` the class names, if the dataset has any; ``extra`` the manifest's extra fields.
    """

    job_id: str = ""
    extension_id: str = ""
    labels: list[str] = field(default_factory=list)
    extension_userdata: dict[str, Any] = field(default_factory=dict)
    feature_dtype: str = "uint8"
    extra: dict[str, Any] = field(default_factory=dict)

    def get_labels(self) -> list[str]:
        """The class names (DIGITS's ``dataset.get_labels()``)."""
        return list(self.labels)


class VisualizationInterface:
    """A view extension: turns one inference (input, outputs) into HTML.

    The view service builds one instance per request, ``cls(dataset, **config)`` with the
    fields of the config form, then calls ``process_data`` for every input and renders
    ``get_view_template(data)`` for each and ``get_header_template()`` once. Templates are
    ``(jinja_source, context)`` pairs, rendered with autoescaping; images are best embedded as
    ``data:`` URIs (see ``digits.extensions.view.images``) so that the HTML stands alone.
    """

    def __init__(self, dataset: DatasetInfo | None = None, **kwargs: Any) -> None:
        """Keep the dataset and the config form's fields (as ``self.config``)."""
        self.dataset = dataset if dataset is not None else DatasetInfo()
        self.config = dict(kwargs)

    @staticmethod
    def get_config_form() -> Any:
        """Return a Flask-WTF form with the view's options, or None if it has none."""
        return None

    @staticmethod
    def get_config_template(form: Any) -> tuple[str | None, dict[str, Any]]:
        """Return ``(jinja_template_source, context)`` to render the config form."""
        return None, {}

    @staticmethod
    def get_id() -> str:
        """Return the extension's unique id (e.g. "image-segmentation")."""
        raise NotImplementedError

    @staticmethod
    def get_title() -> str:
        """Return the title shown in the view menu (e.g. "Image Segmentation")."""
        raise NotImplementedError

    @staticmethod
    def get_default_visibility() -> bool:
        """Return whether the extension is offered in the web UI by default."""
        return True

    def get_header_template(self) -> tuple[str | None, dict[str, Any]]:
        """Return ``(jinja_template_source, context)`` shown once above the views, or (None, {})."""
        return None, {}

    def get_view_template(self, data: Any) -> tuple[str, dict[str, Any]]:
        """Return ``(jinja_template_source, context)`` showing ``data`` from process_data."""
        raise NotImplementedError

    def process_data(
        self,
        input_id: Any,
        input_data: Any,
        inference_data: dict[str, Any],
        ground_truth: Any = None,
    ) -> Any:
        """Return what to visualize for one input.

        ``input_data`` is the input as the dataset stores features (HWC numpy, RGB or one
        channel, its dtype unscaled); ``inference_data`` maps the network's output names to this
        input's outputs (numpy arrays, HWC for spatial outputs); ``ground_truth`` is its label
        when known.
        """
        raise NotImplementedError
