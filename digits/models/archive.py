"""Pretrained model archives: checked, then one snapshot taken out to fine-tune from.

The archive is the model download's format (the gateway's download route): a .tar.gz of
``epoch-N.keras`` snapshots, ``network.json``, ``info.json``, ``labels.txt``, the mean image and the
SavedModel export's files under ``saved_model/`` (checked like the rest, never extracted). It comes
from a user, so nothing in it is trusted: every member must be a plain file under a safe relative
name (no absolute path, no ``..``, no links or devices), within the caps below; only the chosen
snapshot is written out, under a name of our own.
"""

from __future__ import annotations

import math
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from digits.models.layout import SAVED_MODEL, SNAPSHOT_NAME, snapshot_name

MAX_ARCHIVE_BYTES = 4 << 30  # compressed
MAX_MEMBER_BYTES = 4 << 30  # one file, uncompressed
MAX_TOTAL_BYTES = 8 << 30  # every file, uncompressed
MAX_MEMBERS = 10_000


def safe_name(name: str) -> bool:
    """Whether ``name`` is a relative path that stays inside the archive."""
    path = PurePosixPath(name)
    return bool(name) and not (
        name.startswith("/") or "\\" in name or path.is_absolute() or ".." in path.parts
    )


class ArchiveError(ValueError):
    """The archive is not a model archive this worker accepts; the message says why."""


def _check_name(name: str) -> None:
    if safe_name(name):
        return
    if ".." in PurePosixPath(name).parts:
        raise ArchiveError(f"archive member {name!r} points outside the archive ('..')")
    raise ArchiveError(f"archive member {name!r} has an absolute or unsafe path")


def snapshots(path: Path) -> dict[float, tarfile.TarInfo]:
    """Check the archive at ``path`` member by member; its snapshots by epoch."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"the archive is {size} bytes, over the {MAX_ARCHIVE_BYTES} allowed")
    found: dict[float, tarfile.TarInfo] = {}
    total = count = 0
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"the archive has more than {MAX_MEMBERS} members")
                _check_name(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    what = "link" if member.issym() or member.islnk() else "special file"
                    raise ArchiveError(f"archive member {member.name!r} is a {what}, not a file")
                if member.size > MAX_MEMBER_BYTES:
                    raise ArchiveError(
                        f"archive member {member.name!r} is {member.size} bytes, "
                        f"over the {MAX_MEMBER_BYTES} allowed"
                    )
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise ArchiveError(f"the archive unpacks to over {MAX_TOTAL_BYTES} bytes")
                path = PurePosixPath(member.name)
                exported = path.parts[:1] == (SAVED_MODEL.rstrip("/"),)
                match = None if exported else SNAPSHOT_NAME.match(path.name)
                if match:
                    epoch = float(match.group(1))
                    if epoch in found:
                        raise ArchiveError(
                            f"the archive has two snapshots of epoch {epoch:g}: "
                            f"{found[epoch].name!r} and {member.name!r}"
                        )
                    found[epoch] = member
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"the archive is not a readable .tar.gz: {exc}") from None
    if not found:
        raise ArchiveError("the archive has no epoch-N.keras snapshot")
    return found


def choose(found: dict[float, tarfile.TarInfo], epoch: float | None) -> float:
    """The snapshot to start from: ``epoch`` if given (it must exist), else the latest."""
    if epoch is None:
        return max(found)
    for have in found:
        if math.isclose(have, epoch, abs_tol=5e-5):
            return have
    shown = ", ".join(f"{e:g}" for e in sorted(found))
    raise ArchiveError(f"the archive has no snapshot at epoch {epoch:g}; it has {shown}")


def extract_snapshot(path: Path, dest_dir: Path, epoch: float | None = None) -> Path:
    """Check the archive and write the chosen snapshot to ``dest_dir``; its path."""
    found = snapshots(path)
    chosen = choose(found, epoch)
    member = found[chosen]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / snapshot_name(chosen)
    tmp = dest.with_suffix(".part")
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            # The very member that was checked, even if a later one has the same name.
            same = (m for m in tar if m.name == member.name and m.offset == member.offset)
            source = tar.extractfile(next(same))
            if source is None:
                raise ArchiveError(f"archive member {member.name!r} cannot be read")
            with source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, StopIteration) as exc:
        raise ArchiveError(f"the archive is not a readable .tar.gz: {exc!r}") from None
    tmp.replace(dest)
    return dest
