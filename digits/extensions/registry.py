"""Finding extensions: the built-ins plus plugins installed under an entry-point group.

Data and view extensions are found the same way (DIGITS's groups ``digits.plugins.data`` and
``digits.plugins.view``). A plugin that fails to import, or is not a proper extension, is listed
as broken with its error and logged; the others keep working.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class UnknownExtension(KeyError, ValueError):
    """No extension has the requested id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _entry_point_name(ep: importlib.metadata.EntryPoint) -> str:
    # DIGITS plugins all name their entry point "class", so the value tells them apart.
    # The distribution's name in its canonical form (setuptools versions spell it differently).
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    prefix = f"{re.sub(r'[-_.]+', '-', name).lower()}: " if name else ""
    return f"{prefix}{ep.value}"


class Registry:
    """The extensions of one kind, discovered once (again on ``refresh``)."""

    def __init__(
        self, kind: str, group: str, interface: type, builtins: Callable[[], list[type]]
    ) -> None:
        self.kind = kind  # "data" or "view", for messages
        self.group = group
        self.interface = interface
        self.builtins = builtins  # imported lazily: importing the package stays cheap
        self._lock = threading.Lock()
        self._cache: tuple[dict[str, type], dict[str, str]] | None = None

    def check(self, obj: object) -> str:
        """Return the id of a valid extension class, or raise TypeError saying what is wrong."""
        if not isinstance(obj, type) or not issubclass(obj, self.interface):
            raise TypeError(f"{obj!r} is not a subclass of {self.interface.__name__}")
        ext_id = obj.get_id()
        if not isinstance(ext_id, str) or not ext_id:
            raise TypeError(f"{obj.__name__}.get_id() returned {ext_id!r}, not a non-empty str")
        return ext_id

    def _discover(self) -> tuple[dict[str, type], dict[str, str]]:
        extensions: dict[str, type] = {}
        broken: dict[str, str] = {}
        for cls in self.builtins():
            extensions[self.check(cls)] = cls
        try:
            entry_points = list(importlib.metadata.entry_points(group=self.group))
        except Exception as exc:  # a damaged installed distribution must not take us down
            logger.exception("cannot list the %s entry points", self.group)
            broken[self.group] = f"cannot list entry points: {type(exc).__name__}: {exc}"
            entry_points = []
        for ep in entry_points:
            name = _entry_point_name(ep)
            try:
                cls = ep.load()
                ext_id = self.check(cls)
                if ext_id in extensions:
                    taken = extensions[ext_id]
                    raise ValueError(
                        f"id {ext_id!r} is already taken by {taken.__module__}.{taken.__qualname__}"
                    )
            except Exception as exc:  # a plugin's import can fail in any way; keep the others
                broken[name] = f"{type(exc).__name__}: {exc}"
                logger.error(
                    "%s plugin %s is broken and was skipped: %s", self.kind, name, broken[name]
                )
                continue
            extensions[ext_id] = cls
        return extensions, broken

    def _load(self, refresh: bool) -> tuple[dict[str, type], dict[str, str]]:
        with self._lock:
            if self._cache is None or refresh:
                self._cache = self._discover()
            return self._cache

    def get_extensions(self, refresh: bool = False) -> dict[str, type]:
        """Every extension class by id: built-ins first, then installed plugins."""
        return dict(self._load(refresh)[0])

    def broken_extensions(self, refresh: bool = False) -> dict[str, str]:
        """The plugins that failed to load: entry point (``dist: module:attr``) -> error."""
        return dict(self._load(refresh)[1])

    def get_extension(self, extension_id: str) -> type:
        """The extension class with ``extension_id``; UnknownExtension lists the known ids."""
        extensions = self.get_extensions()
        try:
            return extensions[extension_id]
        except (KeyError, TypeError):
            known = ", ".join(repr(k) for k in sorted(extensions)) or "none"
            raise UnknownExtension(
                f"unknown {self.kind} extension {extension_id!r}; known ids: {known}"
            ) from None
