"""Confining image paths to the data roots at ingest speed: each folder is resolved once."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence

from digits.paths import PathNotAllowed, confine

FOLDER_TRUST_S = 1.0  # how long a resolved folder is reused: bounds a swap-for-a-symlink race
MAX_FOLDERS = 1024


class FolderResolver:
    """``confine(path, roots)`` for many files of few folders: one ``realpath`` per folder.

    A file name is joined to its folder's resolved path; a symlinked file, a missing folder or
    anything unusual takes the full ``confine``, whose error names the file.
    """

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = roots
        self._folders: dict[str, tuple[float, str]] = {}  # folder -> (when, resolved)

    def confine(self, path: str) -> str:
        """The resolved ``path``; PathNotAllowed if it lies outside the roots."""
        folder, name = os.path.split(path)
        if name in ("", ".", "..") or "\x00" in path or not os.path.isabs(path):
            return str(confine(path, self.roots))  # unusual: the full check says why
        now = time.monotonic()
        known = self._folders.get(folder)
        if known is None or now - known[0] > FOLDER_TRUST_S:
            try:
                known = (now, str(confine(folder, self.roots)))
            except PathNotAllowed:
                return str(confine(path, self.roots))  # its error names the file
            if len(self._folders) >= MAX_FOLDERS:
                self._folders.clear()
            self._folders[folder] = known
        resolved = os.path.join(known[1], name)
        try:
            if stat.S_ISLNK(os.lstat(resolved).st_mode):
                return str(confine(path, self.roots))  # a symlinked file: follow and check
        except OSError:
            pass  # missing or unreadable: load_image says which
        return resolved
