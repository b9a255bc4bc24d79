"""Data extensions: the built-ins plus plugins installed under the ``digits.plugins.data`` group.

A plugin is registered as in DIGITS, e.g. in its setup.py::

    entry_points={"digits.plugins.data": ["class=digitsDataPluginSunnybrook:DataIngestion"]}
"""

from __future__ import annotations

from digits.extensions.registry import Registry, UnknownExtension

from .interface import DataIngestionInterface

__all__ = [
    "GROUP",
    "DataIngestionInterface",
    "UnknownExtension",
    "broken_extensions",
    "get_extension",
    "get_extensions",
]

# Entry point group that installed data plugins register under (the same key as DIGITS).
GROUP = "digits.plugins.data"


def _builtin_extensions() -> list[type]:
    # Imported here so that importing this package stays cheap (Pillow, numpy).
    from . import imageClassification, imageSegmentation, objectDetection

    return [
        imageClassification.DataIngestion,
        imageSegmentation.DataIngestion,
        objectDetection.DataIngestion,
    ]


_registry = Registry("data", GROUP, DataIngestionInterface, _builtin_extensions)
get_extensions = _registry.get_extensions
broken_extensions = _registry.broken_extensions
get_extension = _registry.get_extension
