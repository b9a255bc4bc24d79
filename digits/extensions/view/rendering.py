"""Run a view extension over inference results and render its templates to HTML fragments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import get_extension
from .interface import DatasetInfo


class ViewError(ValueError):
    """A view could not be built or rendered; the message names the view and the input."""


@dataclass(frozen=True)
class Inference:
    """One input and what the network made of it, as ``process_data`` receives them."""

    input_id: Any
    input_data: Any
    inference_data: dict[str, Any]
    ground_truth: Any = None


@dataclass
class Rendered:
    """A view's HTML: the header once (None without one), then one fragment per input."""

    header_html: str | None
    views_html: list[str] = field(default_factory=list)


def read_template(package_file: str, name: str) -> str:
    """The text of template ``name`` beside ``package_file`` (a module's ``__file__``)."""
    return (Path(package_file).parent / name).read_text(encoding="utf-8")


_env: Any = None


def _environment() -> Any:
    global _env
    if _env is None:
        import jinja2

        # Autoescaped, as Flask's render_template_string is: output values cannot inject markup.
        _env = jinja2.Environment(autoescape=True)
    return _env


def render_template(source: str, context: dict[str, Any]) -> str:
    """Render a Jinja template string with ``context``."""
    return _environment().from_string(source).render(**context)


def build_view(extension_id: str, config: dict[str, Any], dataset: DatasetInfo) -> Any:
    """An instance of view ``extension_id`` configured with ``config``; ViewError says why not."""
    cls = get_extension(extension_id)
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ViewError(f"view config must be a map of field names, not {config!r}")
    try:
        return cls(dataset, **config)
    except Exception as exc:  # a plugin may reject its config in any way
        raise ViewError(f"view {extension_id!r}: bad config: {type(exc).__name__}: {exc}") from None


def render(
    extension_id: str,
    config: dict[str, Any],
    dataset: DatasetInfo,
    inferences: Sequence[Inference],
) -> Rendered:
    """``process_data`` per input, then the header template once and the view template per input."""
    view = build_view(extension_id, config, dataset)
    out = Rendered(header_html=None)
    for n, inf in enumerate(inferences):
        try:
            data = view.process_data(
                inf.input_id, inf.input_data, inf.inference_data, inf.ground_truth
            )
            source, context = view.get_view_template(data)
            out.views_html.append(render_template(source, context or {}))
        except Exception as exc:  # plugin code: report which input and what went wrong
            raise ViewError(
                f"view {extension_id!r} failed on input {n} ({inf.input_id!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
    try:
        source, context = view.get_header_template()
        if source:
            out.header_html = render_template(source, context or {})
    except Exception as exc:
        raise ViewError(
            f"view {extension_id!r}: header template: {type(exc).__name__}: {exc}"
        ) from None
    return out
