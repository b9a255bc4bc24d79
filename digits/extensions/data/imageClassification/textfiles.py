"""Text-list sources: a labels file and ``path label`` lists, as DIGITS's "Textfiles" method."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from digits.paths import PathNotAllowed, confine


def read_text(path: str, roots: Sequence[str], field: str) -> str:
    """Read a local text file named by form field ``field``, confined to the data roots."""
    resolved = confine(path, roots)
    try:
        return resolved.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{field} {path!r} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{field} {path!r} cannot be read: {exc.strerror or exc}") from None


def parse_labels(text: str, source: str) -> list[str]:
    """Return the labels, one per non-blank line, in file order (line i is label i-1)."""
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"{source} holds no labels; give one label per line")
    return labels


def parse_list(
    text: str,
    *,
    source: str,
    num_labels: int,
    folder: str | None,
    folder_field: str,
    roots: Sequence[str],
) -> list[tuple[str, int]]:
    """Parse ``path label`` lines into (absolute confined path, label index) entries.

    Blank lines and lines starting with "#" are skipped. The label is the last whitespace-
    separated token, an index into the labels file; the path (which may hold spaces) is the
    rest. Relative paths are taken relative to ``folder``.
    """
    entries: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{source} line {number}: expected 'path label', got {line!r}")
        path_text, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(
                f"{source} line {number}: label {label_text!r} is not an integer index into "
                f"the {num_labels} labels"
            ) from None
        if not 0 <= label < num_labels:
            raise ValueError(
                f"{source} line {number}: label {label} is out of range; the labels file has "
                f"{num_labels} labels (0..{num_labels - 1})"
            )
        path = Path(os.path.expanduser(path_text))
        if not path.is_absolute():
            if folder is None:
                raise ValueError(
                    f"{source} line {number}: relative path {path_text!r} needs {folder_field} "
                    "(the folder it is relative to), or give absolute paths"
                )
            path = Path(folder) / path
        try:
            resolved = confine(str(path), roots)
        except PathNotAllowed as exc:
            raise PathNotAllowed(f"{source} line {number}: {exc}") from None
        entries.append((str(resolved), label))
    return entries
