"""View extensions: the built-ins plus plugins installed under the ``digits.plugins.view`` group.

A plugin is registered as in DIGITS, e.g. in its setup.py::

    entry_points={"digits.plugins.view": ["class=digitsViewPluginGradients:Visualization"]}
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading

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

logger = logging.getLogger(__name__)

# Entry point group that installed view plugins register under (the same key as DIGITS).
GROUP = "digits.plugins.view"


class UnknownExtension(KeyError, ValueError):
    """No view extension has the requested id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_lock = threading.Lock()
_cache: tuple[dict[str, type], dict[str, str]] | None = None


def _builtin_extensions() -> list[type]:
    # Imported here so that importing this package stays cheap (Pillow, numpy).
    from . import boundingBox, imageOutput, imageSegmentation, rawData

    return [
        rawData.Visualization,
        imageOutput.Visualization,
        imageSegmentation.Visualization,
        boundingBox.Visualization,
    ]


def _entry_point_name(ep: importlib.metadata.EntryPoint) -> str:
    # DIGITS plugins all name their entry point "class", so the value tells them apart.
    dist = getattr(ep, "dist", None)
    prefix = f"{dist.name}: " if dist is not None and getattr(dist, "name", None) else ""
    return f"{prefix}{ep.value}"


def _check_extension(obj: object) -> str:
    """Return the id of a valid extension class, or raise TypeError saying what is wrong."""
    if not isinstance(obj, type) or not issubclass(obj, VisualizationInterface):
        raise TypeError(f"{obj!r} is not a subclass of VisualizationInterface")
    ext_id = obj.get_id()
    if not isinstance(ext_id, str) or not ext_id:
        raise TypeError(f"{obj.__name__}.get_id() returned {ext_id!r}, not a non-empty str")
    return ext_id


def _discover() -> tuple[dict[str, type], dict[str, str]]:
    extensions: dict[str, type] = {}
    broken: dict[str, str] = {}
    for cls in _builtin_extensions():
        extensions[_check_extension(cls)] = cls
    try:
        entry_points = list(importlib.metadata.entry_points(group=GROUP))
    except Exception as exc:  # a damaged installed distribution must not take the service down
        logger.exception("cannot list the %s entry points", GROUP)
        broken[GROUP] = f"cannot list entry points: {type(exc).__name__}: {exc}"
        entry_points = []
    for ep in entry_points:
        name = _entry_point_name(ep)
        try:
            cls = ep.load()
            ext_id = _check_extension(cls)
            if ext_id in extensions:
                raise ValueError(
                    f"id {ext_id!r} is already taken by {extensions[ext_id].__module__}."
                    f"{extensions[ext_id].__qualname__}"
                )
        except Exception as exc:  # a plugin's import can fail in any way; keep the others
            broken[name] = f"{type(exc).__name__}: {exc}"
            logger.error("view plugin %s is broken and was skipped: %s", name, broken[name])
            continue
        extensions[ext_id] = cls
    return extensions, broken


def _load(refresh: bool) -> tuple[dict[str, type], dict[str, str]]:
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = _discover()
        return _cache


def get_extensions(refresh: bool = False) -> dict[str, type]:
    """Return every view extension class by id: built-ins first, then installed plugins."""
    return dict(_load(refresh)[0])


def broken_extensions(refresh: bool = False) -> dict[str, str]:
    """Return the plugins that failed to load: entry point (``dist: module:attr``) -> error."""
    return dict(_load(refresh)[1])


def get_extension(extension_id: str) -> type:
    """Return the view extension class with ``extension_id``; UnknownExtension lists the ids."""
    extensions = get_extensions()
    try:
        return extensions[extension_id]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in sorted(extensions)) or "none"
        raise UnknownExtension(
            f"unknown view extension {extension_id!r}; known ids: {known}"
        ) from None
