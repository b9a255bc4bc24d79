"""Confine user-supplied filesystem paths to the configured data roots (DIGITS_DATA_ROOTS)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path


class PathNotAllowed(ValueError):
    """A path lies outside the data roots, or no data roots are configured."""


def resolve_roots(roots: Sequence[str]) -> tuple[Path, ...]:
    """Resolve each data root (``~`` expanded, symlinks followed); empty entries are dropped."""
    return _resolve_roots(tuple(str(r) for r in roots))


@functools.lru_cache(maxsize=64)
def _resolve_roots(roots: tuple[str, ...]) -> tuple[Path, ...]:
    # Ingest checks every entry: resolving the roots once per process, not once per image.
    return tuple(Path(os.path.expanduser(r)).resolve() for r in roots if r.strip())


def confine(path: str | os.PathLike[str], roots: Sequence[str]) -> Path:
    """Return ``path`` resolved (symlinks followed); PathNotAllowed if outside ``roots``."""
    text = os.fspath(path)
    resolved_roots = resolve_roots(roots)
    if not resolved_roots:
        raise PathNotAllowed(
            f"path {text!r} is not allowed: no data roots are configured "
            "(DIGITS_DATA_ROOTS is not set)"
        )
    if not text.strip():
        raise PathNotAllowed("an empty path is not allowed; give an absolute path in a data root")
    if "\x00" in text:
        raise PathNotAllowed(f"path {text!r} contains a NUL byte")
    expanded = Path(os.path.expanduser(text))
    if not expanded.is_absolute():
        raise PathNotAllowed(f"path {text!r} is not absolute; give an absolute path in a data root")
    try:
        resolved = Path(os.path.realpath(expanded, strict=False))
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, unreadable components
        raise PathNotAllowed(f"path {text!r} cannot be resolved: {exc}") from exc
    text_resolved = str(resolved)
    for root in resolved_roots:
        base = str(root)
        if text_resolved == base or text_resolved.startswith(base.rstrip(os.sep) + os.sep):
            return resolved
    shown = os.pathsep.join(str(r) for r in resolved_roots)
    raise PathNotAllowed(
        f"path {text!r} (resolved to {str(resolved)!r}) is outside the data roots {shown!r} "
        "(DIGITS_DATA_ROOTS)"
    )


def is_within(path: str | os.PathLike[str], roots: Sequence[str]) -> bool:
    """Whether ``confine`` would accept ``path``."""
    try:
        confine(path, roots)
    except PathNotAllowed:
        return False
    return True
