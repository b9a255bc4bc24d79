"""Shared parts of the dataset downloaders: fetching archives and writing the DIGITS layout."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

MIRROR_ENV = "DIGITS_DOWNLOAD_MIRROR"
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 16
OFFLINE_HINT = "are you offline? use `synthetic` for an offline set"


class DownloadError(Exception):
    """An archive could not be fetched from any of its URLs."""


class DataError(Exception):
    """A downloaded archive is not in the expected format."""


@dataclass
class DatasetInfo:
    """What a downloader or generator wrote: the root folder, label names and image counts."""

    root: Path
    labels: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def say(message: str) -> None:
    """Print a progress line on stdout, flushed."""
    print(message, flush=True)


def base_urls(mirror: str | None, defaults: Sequence[str]) -> list[str]:
    """The base URLs to try: ``mirror``, else $DIGITS_DOWNLOAD_MIRROR, else ``defaults``."""
    chosen = mirror or os.environ.get(MIRROR_ENV, "").strip()
    return [chosen] if chosen else list(defaults)


def join_url(base: str, name: str) -> str:
    """The URL of file ``name`` under base URL ``base``."""
    return base.rstrip("/") + "/" + name


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason) if not isinstance(reason, BaseException) else _reason(reason)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__


def download(url: str, dest: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Fetch ``url`` into ``dest`` (atomically, via a .part file); DownloadError on failure."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
        os.replace(part, dest)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"cannot download {url}: {_reason(exc)}") from None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"cannot download {url}: {_reason(exc)}") from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def fetch(name: str, bases: Sequence[str], outdir: Path, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download file ``name`` into ``outdir`` from the first base URL that works (kept if there)."""
    dest = outdir / name
    if dest.exists():
        say(f"Using downloaded file {dest}")
        return dest
    failures: list[str] = []
    for base in bases:
        url = join_url(base, name)
        say(f"Downloading url={url} ...")
        try:
            return download(url, dest, timeout)
        except DownloadError as exc:
            failures.append(str(exc))
    raise DownloadError("; ".join(failures) + f"; {OFFLINE_HINT}")


def prepare_outdir(outdir: str | os.PathLike[str], clean: bool = False) -> Path:
    """Create ``outdir`` (emptied first with ``clean``) and return it, resolved."""
    root = Path(outdir).expanduser().resolve()
    if clean and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_labels(root: Path, labels: Sequence[str], name: str = "labels.txt") -> Path:
    """Write the label names, one a line, to ``root/name``."""
    path = root / name
    path.write_text("".join(f"{label}\n" for label in labels))
    return path


def write_phase(
    root: Path,
    phase: str,
    images: Iterable[np.ndarray],
    labels: Iterable[int],
    label_names: Sequence[str],
    extra: dict[str, Sequence[int]] | None = None,
) -> int:
    """Save ``images`` as ``root/phase/<label>/<nnnnn>.png`` and list them in ``root/phase.txt``.

    ``extra`` maps a text file name to other per-image label indices (e.g. CIFAR-100's coarse ones).
    """
    for name in label_names:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise DataError(f"label {name!r} cannot be a directory name")
    phase_dir = root / phase
    if phase_dir.exists():
        shutil.rmtree(phase_dir)
    phase_dir.mkdir()
    made: set[str] = set()
    lines: list[str] = []
    extra_lines: dict[str, list[str]] = {name: [] for name in extra or {}}
    count = 0
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = label_names[int(label)]
        if name not in made:
            (phase_dir / name).mkdir(exist_ok=True)
            made.add(name)
        path = phase_dir / name / f"{index:05d}.png"
        PIL.Image.fromarray(np.ascontiguousarray(image)).save(path)
        lines.append(f"{path} {int(label)}\n")
        for text_name, values in (extra or {}).items():
            extra_lines[text_name].append(f"{path} {int(values[index])}\n")
        count += 1
    (root / f"{phase}.txt").write_text("".join(lines))
    for text_name, text in extra_lines.items():
        (root / text_name).write_text("".join(text))
    return count


def fail(message: str) -> int:
    """Print ``message`` as an error on stderr and return exit status 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1
