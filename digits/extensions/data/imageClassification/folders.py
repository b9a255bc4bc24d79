"""Folder-of-folders sources: a class per sub-folder, split per class as parse_folder did."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from digits.paths import confine
from digits.utils.image import SUPPORTED_EXTENSIONS


@dataclass(frozen=True)
class ClassFolder:
    """One class: its label (folder name, "_" shown as " "), sub-folder name and image paths."""

    label: str
    dirname: str
    paths: tuple[str, ...]


def label_for(dirname: str) -> str:
    """Return the class label DIGITS derived from a sub-folder name ("_" becomes " ")."""
    return dirname.replace("_", " ")


def class_dirnames(folder: str) -> list[str]:
    """Return the sorted names of ``folder``'s sub-directories (symlinked ones included)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _walk_images(top: str, roots: Sequence[str]) -> list[str]:
    """Return the sorted image paths under ``top``, following symlinks that stay in the roots.

    ``os.scandir`` knows each entry's type from the listing: only symlinks cost a system call.
    """
    found: list[str] = []
    seen: set[str] = set()
    pending = [top]
    while pending:
        dirpath = pending.pop()
        real = str(confine(dirpath, roots))  # a symlinked dir pointing out is refused here
        if real in seen:  # symlink cycles
            continue
        seen.add(real)
        try:
            with os.scandir(dirpath) as entries:
                listed = list(entries)
        except OSError:
            continue  # unreadable: skipped, as os.walk skips it
        for entry in listed:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks, as os.walk(followlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                pending.append(entry.path)
            elif name.lower().endswith(SUPPORTED_EXTENSIONS):
                if entry.is_symlink():
                    confine(entry.path, roots)
                found.append(entry.path)
    found.sort()
    return found


def scan_folder(folder: str, roots: Sequence[str], field: str) -> list[ClassFolder]:
    """Return the classes of ``folder`` in sorted sub-folder order, each with its images."""
    dirnames = class_dirnames(folder)
    if not dirnames:
        raise ValueError(
            f"{field} {folder!r} has no class sub-folders; put each class's images in "
            "a sub-folder named after the class"
        )
    classes: list[ClassFolder] = []
    by_label: dict[str, str] = {}
    for dirname in dirnames:
        label = label_for(dirname)
        if label in by_label:
            raise ValueError(
                f"{field} {folder!r}: sub-folders {by_label[label]!r} and {dirname!r} both give "
                f"the label {label!r}"
            )
        by_label[label] = dirname
        paths = _walk_images(os.path.join(folder, dirname), roots)
        classes.append(ClassFolder(label, dirname, tuple(paths)))
    return classes


def select(
    cls: ClassFolder,
    *,
    need: int,
    min_per_class: int,
    max_per_class: int | None,
    key: str,
    field: str,
) -> list[str]:
    """Shuffle a class's images (seeded by ``key``), check the minimum, keep at most the max."""
    count = len(cls.paths)
    if count < min_per_class:
        raise ValueError(
            f"class {cls.label!r} (sub-folder {cls.dirname!r} of {field}) has {count} images, "
            f"fewer than the minimum of {min_per_class} per class"
        )
    kept = count if max_per_class is None else min(count, max_per_class)
    if kept < need:
        raise ValueError(
            f"class {cls.label!r} (sub-folder {cls.dirname!r} of {field}) has {kept} usable "
            f"images, too few to give one to each of the {need} stages it is split into"
        )
    paths = list(cls.paths)
    random.Random(key).shuffle(paths)
    return paths if max_per_class is None else paths[:max_per_class]


def _round_pct(count: int, pct: int) -> int:
    """``count * pct / 100`` rounded half up, in integers."""
    return (2 * count * pct + 100) // 200


def split_counts(count: int, pct_val: int, pct_test: int) -> tuple[int, int, int]:
    """Return (train, val, test) sizes for one class of ``count`` images.

    val and test are ``count * pct / 100`` rounded half up; a stage with a non-zero percentage
    gets at least one image; train keeps the rest and at least one (taken back from the larger
    of val/test, from test on a tie). Needs ``count`` >= the number of non-zero stages.
    """
    val = max(_round_pct(count, pct_val), 1 if pct_val else 0)
    test = max(_round_pct(count, pct_test), 1 if pct_test else 0)
    while count - val - test < 1 and (val > 1 or test > 1):
        if val > test:
            val -= 1
        else:
            test -= 1
    train = count - val - test
    if train < 1:
        raise ValueError(
            f"{count} images cannot be split {100 - pct_val - pct_test}/"
            f"{pct_val}/{pct_test} with at least one per stage"
        )
    return train, val, test
