"""A Sunnybrook-layout folder made from pydicom's bundled MR and CT slices, with known contours."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

SIZE = 64  # every slice is 64x64: MR_small as it is, CT_small (128x128) halved


@dataclass(frozen=True)
class Slice:
    """One generated slice: its case, image number, file, and the contour drawn on it."""

    case: str
    number: int
    dicom: Path
    polygon: list[tuple[float, float]]
    rectangle: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (inclusive) when a rectangle


def source_pixels(name: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """A bundled DICOM file and its pixels as 64x64."""
    ds = pydicom.dcmread(get_testdata_file(name))
    pixels = ds.pixel_array
    step = pixels.shape[0] // SIZE
    return ds, np.ascontiguousarray(pixels[::step, ::step])


def write_slice(name: str, path: Path, number: int) -> np.ndarray:
    """Write a copy of a bundled file as slice ``number``; pixel (0, 0) holds the number."""
    ds, pixels = source_pixels(name)
    pixels = pixels.copy()
    pixels[0, 0] = number  # so a sample tells which slice it came from
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.InstanceNumber = number
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return pixels


def polygon_for(number: int) -> tuple[list[tuple[float, float]], tuple[int, int, int, int] | None]:
    """Even numbers: an axis-aligned rectangle; odd: a 24-gon approximating a circle."""
    if number % 2 == 0:
        x0, y0 = 10 + number % 7, 12 + number % 5
        x1, y1 = x0 + 20 + number % 9, y0 + 15 + number % 11
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], (x0, y0, x1, y1)
    cx, cy, r = 32.0 + number % 5, 30.0 + number % 3, 9.0 + number % 6
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], None


def write_contour(path: Path, polygon: list[tuple[float, float]]) -> None:
    """An ``x y`` point per line, as the Sunnybrook expert contours are written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in polygon))


def contour_path(contours: Path, case: str, number: int) -> Path:
    """Where the expert inner contour of a slice lives."""
    name = f"IM-0001-{number:04d}-icontour-manual.txt"
    return contours / case / "contours-manual" / "IRCCI-expert" / name


def make_sunnybrook(root: Path) -> tuple[Path, Path, list[Slice]]:
    """(image folder, contour folder, slices with contours).

    Case SC-HF-I-01 (a challenge case: its short-axis series 0004 is known) has MR slices in
    series 0004 and decoys in series 0003; case SC-XX-7 has CT slices in one series (0002).
    """
    images, contours = root / "images", root / "contours"
    slices: list[Slice] = []
    for number in range(20, 32):  # 12 MR slices
        dicom = images / "SC-HF-I-1" / f"IM-0004-{number:04d}.dcm"
        write_slice("MR_small.dcm", dicom, number)
        write_slice("CT_small.dcm", images / "SC-HF-I-1" / f"IM-0003-{number:04d}.dcm", 1)
        polygon, rect = polygon_for(number)
        write_contour(contour_path(contours, "SC-HF-I-01", number), polygon)
        slices.append(Slice("SC-HF-I-01", number, dicom, polygon, rect))
    for number in range(40, 48):  # 8 CT slices
        dicom = images / "SC-XX-7" / f"IM-0002-{number:04d}.dcm"
        write_slice("CT_small.dcm", dicom, number)
        polygon, rect = polygon_for(number)
        write_contour(contour_path(contours, "SC-XX-07", number), polygon)
        slices.append(Slice("SC-XX-07", number, dicom, polygon, rect))
    return images, contours, slices


def shoelace(polygon: list[tuple[float, float]]) -> float:
    """The area of a polygon."""
    xs, ys = np.array(polygon).T
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def perimeter(polygon: list[tuple[float, float]]) -> float:
    """The length of a polygon's outline."""
    pts = np.array(polygon)
    return float(np.linalg.norm(pts - np.roll(pts, 1, axis=0), axis=1).sum())


def inside(polygon: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Pixel centres inside the polygon (even-odd rule): an independent reference raster."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    result = np.zeros((height, width), bool)
    pts = np.array(polygon)
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        result ^= crosses & (xs < x_at)
    return result
