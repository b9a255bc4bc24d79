"""View extensions: the built-ins plus plugins installed under the ``digits.plugins.view`` group.

A plugin is registered as in DIGITS, e.g. in its setup.py::

    entry_points={"digits.plugins.view": ["class=digitsViewPluginGradients:Visualization"]}
"""

from __future__ import annotations

from digits.extensions.registry import Registry, UnknownExtension

from .interface import DatasetInfo, VisualizationInterface

__all__ = [
    "GROUP",
    "DatasetInfo",
    "UnknownExtension",
    "VisualizationInterface",
    "broken_extensions",
    "get_extension",
    "get_extensions",
]

# Entry point group that installed view plugins register under (the same key as DIGITS).
GROUP = "digits.plugins.view"


def _builtin_extensions() -> list[type]:
    # Imported here so that importing this package stays cheap (Pillow, numpy).
    from . import boundingBox, imageOutput, imageSegmentation, rawData

    return [
        rawData.Visualization,
        imageOutput.Visualization,
        imageSegmentation.Visualization,
        boundingBox.Visualization,
    ]


_registry = Registry("view", GROUP, VisualizationInterface, _builtin_extensions)
get_extensions = _registry.get_extensions
broken_extensions = _registry.broken_extensions
get_extension = _registry.get_extension
