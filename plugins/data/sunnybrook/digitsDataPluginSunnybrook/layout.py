"""The Sunnybrook Cardiac MR layout: DICOM slices per case and series, inner contour text files.

Images: ``<image_folder>/<case>/IM-<series>-<image>.dcm`` (e.g. ``SC-HF-I-1/IM-0004-0048.dcm``).
Contours: ``<contour_folder>/<case>/contours-manual/IRCCI-expert/IM-0001-<n>-icontour-manual.txt``
(one ``x y`` point per line, in pixel coordinates of the slice). Contour folders name the case
with zero-padded numbers (``SC-HF-I-01``), image folders without (``SC-HF-I-1``); both are tried.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from digits.paths import confine

CONTOUR_RE = re.compile(r"^IM-0001-(\d{4})-icontour-manual\.txt$")

# The short-axis series that the expert contours of the 2009 LV Segmentation Challenge training
# cases were drawn on; for any other case the series is found by the image number.
SAX_SERIES = {
    "SC-HF-I-1": "0004",
    "SC-HF-I-2": "0106",
    "SC-HF-I-4": "0116",
    "SC-HF-I-40": "0134",
    "SC-HF-NI-3": "0379",
    "SC-HF-NI-4": "0501",
    "SC-HF-NI-34": "0446",
    "SC-HF-NI-36": "0474",
    "SC-HYP-1": "0550",
    "SC-HYP-3": "0650",
    "SC-HYP-38": "0734",
    "SC-HYP-40": "0755",
    "SC-N-2": "0898",
    "SC-N-3": "0915",
    "SC-N-40": "0944",
}

MAX_CONTOUR_BYTES = 1 << 20


def shrink_case(case: str) -> str:
    """``SC-HF-I-01`` -> ``SC-HF-I-1``: the case name as the image folders spell it."""
    return "-".join(str(int(t)) if t.isdigit() else t for t in case.split("-"))


def find_contours(folder: str, roots: Sequence[str]) -> list[str]:
    """Return the sorted inner-contour files under ``folder`` (symlinks must stay in the roots)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        confine(dirpath, roots)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames if CONTOUR_RE.match(f)]
    return sorted(found)


def contour_case(contour: str, contour_folder: str) -> tuple[str, int]:
    """Return (case, image number) of a contour file: the folder above ``contours-manual``."""
    match = CONTOUR_RE.match(os.path.basename(contour))
    if match is None:
        raise ValueError(f"{contour!r} is not named IM-0001-NNNN-icontour-manual.txt")
    parts = Path(os.path.relpath(contour, contour_folder)).parts[:-1]
    if "contours-manual" in parts and parts.index("contours-manual") > 0:
        case = parts[parts.index("contours-manual") - 1]
    elif parts:
        case = parts[0]
    else:
        raise ValueError(
            f"contour {contour!r} is not inside a case folder of {contour_folder!r} "
            "(expected <case>/contours-manual/IRCCI-expert/IM-0001-NNNN-icontour-manual.txt)"
        )
    return case, int(match.group(1))


def find_image(image_folder: str, case: str, number: int) -> str:
    """Return the DICOM slice a contour was drawn on; ValueError says where it looked."""
    looked: list[str] = []
    for name in dict.fromkeys((case, shrink_case(case))):
        folder = os.path.join(image_folder, name)
        if not os.path.isdir(folder):
            looked.append(folder)
            continue
        series = SAX_SERIES.get(shrink_case(case))
        if series is not None:
            path = os.path.join(folder, f"IM-{series}-{number:04d}.dcm")
            if os.path.isfile(path):
                return path
        suffix = f"-{number:04d}.dcm"
        matches = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.startswith("IM-") and f.endswith(suffix) and len(f) == len("IM-0000") + len(suffix)
        )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(os.path.basename(m) for m in matches)
            raise ValueError(
                f"case {case!r} image {number}: several series have that image ({names}) and "
                "the case is not one whose short-axis series is known"
            )
        looked.append(os.path.join(folder, f"IM-*{suffix}"))
    raise ValueError(f"case {case!r} image {number}: no DICOM slice found (looked for {looked})")


def read_contour(path: str | os.PathLike[str]) -> np.ndarray:
    """Return a contour's points as a float64 (N, 2) array of (x, y); ValueError names the line."""
    size = os.path.getsize(path)
    if size > MAX_CONTOUR_BYTES:
        raise ValueError(f"contour file {os.fspath(path)!r} is {size} bytes; too large")
    points: list[tuple[float, float]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError
                x, y = float(fields[0]), float(fields[1])
            except ValueError:
                raise ValueError(
                    f"contour file {os.fspath(path)!r} line {number}: expected 'x y', "
                    f"got {line.strip()[:80]!r}"
                ) from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise ValueError(f"contour file {os.fspath(path)!r} line {number}: not finite")
            points.append((x, y))
    if len(points) < 3:
        raise ValueError(
            f"contour file {os.fspath(path)!r} has {len(points)} points; a polygon needs 3"
        )
    return np.asarray(points, np.float64)


def rasterize(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill a polygon (x, y points, rounded to whole pixels) into a (H, W) 0/1 uint8 mask.

    Pixels on the outline count as inside, as with the OpenCV fillPoly that DIGITS used (which
    truncated the points; rounding keeps the mask centred on the contour).
    """
    mask = Image.new("L", (width, height), 0)
    vertices = [(int(x), int(y)) for x, y in np.rint(points)]
    ImageDraw.Draw(mask).polygon(vertices, fill=1, outline=1)
    return np.asarray(mask, np.uint8)


def read_dicom(path: str | os.PathLike[str]) -> np.ndarray:
    """Return a DICOM slice's stored pixel values: (H, W) or (H, W, 3), uint8 or uint16.

    16-bit data keeps its range (no windowing, no rescale); negative stored values (signed data,
    e.g. CT padding) become 0. ValueError names the file for anything unreadable.
    """
    import pydicom  # imported here: listing the plugin must not need it
    import pydicom.errors

    name = os.fspath(path)
    try:
        ds = pydicom.dcmread(name)
        pixels = ds.pixel_array
    except pydicom.errors.InvalidDicomError as exc:
        raise ValueError(f"{name!r} is not a DICOM file: {exc}") from None
    except Exception as exc:  # a damaged file can make any decoder raise anything
        why = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"DICOM file {name!r} cannot be read: {why}") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if pixels.ndim != (3 if samples == 3 else 2):
        raise ValueError(
            f"DICOM file {name!r} has pixel data of shape {pixels.shape}; only single-frame "
            "grayscale or RGB slices are supported"
        )
    if pixels.dtype.kind not in "ui":
        raise ValueError(f"DICOM file {name!r} has {pixels.dtype} pixel data; expected integers")
    if pixels.dtype.itemsize == 1:
        return np.clip(pixels, 0, None).astype(np.uint8)
    if pixels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"DICOM file {name!r} has pixel values above 65535")
    return np.clip(pixels, 0, None).astype(np.uint16)


def to_channels(pixels: np.ndarray, channel_conversion: str, name: str) -> np.ndarray:
    """Return pixels as an HWC array with 1 ("L") or 3 ("RGB") channels, keeping the dtype."""
    if channel_conversion == "L":
        if pixels.ndim == 2:
            return pixels[:, :, np.newaxis]
        if pixels.dtype != np.uint8:
            raise ValueError(f"DICOM file {name!r}: 16-bit RGB cannot be converted to grayscale")
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))[:, :, np.newaxis]
    if pixels.ndim == 3:
        return pixels
    return np.repeat(pixels[:, :, np.newaxis], 3, axis=2)
