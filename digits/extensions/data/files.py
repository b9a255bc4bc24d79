"""Finding files for data extensions: walks confined to the data roots, name pairing, splits."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

from digits.paths import confine


def roots_list(data_roots: Sequence[str] | str | None) -> list[str]:
    """Normalize DIGITS_DATA_ROOTS given as a list or an ``os.pathsep``-joined string."""
    if data_roots is None:
        return []
    if isinstance(data_roots, str):
        return [r for r in data_roots.split(os.pathsep) if r.strip()]
    return [str(r) for r in data_roots if str(r).strip()]


def list_files(top: str, roots: Sequence[str], suffixes: tuple[str, ...]) -> list[str]:
    """Return the sorted files under ``top`` whose lower-cased names end with one of ``suffixes``.

    Symlinked folders are followed only while they stay inside the data roots; hidden files and
    folders are skipped; symlink cycles are cut.
    """
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = str(confine(dirpath, roots))
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                confine(path, roots)
            found.append(path)
    return sorted(found)


def by_stem(top: str, paths: Sequence[str], field: str) -> dict[str, str]:
    """Map each file's path relative to ``top``, without its extension, to the file.

    Two files that differ only by extension (``a.png`` and ``a.jpg``) are an error naming both.
    """
    stems: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.relpath(path, top))[0]
        if stem in stems:
            raise ValueError(
                f"{field} {top!r} has two files for {stem!r}: {os.path.basename(stems[stem])!r} "
                f"and {os.path.basename(path)!r}; keep one"
            )
        stems[stem] = path
    return stems


def folder(name: str, value: str | None, roots: Sequence[str]) -> str:
    """Return the confined, existing directory a form field names; ValueError says why not."""
    if value is None:
        raise ValueError(f"{name} is required")
    path = confine(value, roots)
    if not path.is_dir():
        raise ValueError(f"{name} {value!r} is not an existing directory")
    return str(path)


def split_val(entries: list[Any], pct_val: int, seed: int, key: str) -> tuple[list, list]:
    """Shuffle (seeded) and set apart floor(n * pct_val / 100) entries: (train, val), as DIGITS."""
    shuffled = list(entries)
    random.Random(f"{seed}:{key}").shuffle(shuffled)
    n_val = math.floor(len(shuffled) * pct_val / 100)
    return shuffled[n_val:], shuffled[:n_val]
