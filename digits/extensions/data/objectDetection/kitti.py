"""KITTI object labels: one text file per image, one object per line.

A line is ``type truncated occluded alpha left top right bottom h w l x y z rotation_y [score]``;
only the type and the 2-D box (0-based pixel coordinates) are used here.
"""

from __future__ import annotations

import os

MAX_LABEL_BYTES = 1 << 20

Box = list[float]  # [class index, x1, y1, x2, y2]


def read_objects(path: str) -> list[tuple[str, float, float, float, float]]:
    """Return (lower-cased type, x1, y1, x2, y2) per object; ValueError names file and line."""
    size = os.path.getsize(path)
    if size > MAX_LABEL_BYTES:
        raise ValueError(f"label file {path!r} is {size} bytes; too large for a KITTI label")
    objects = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 8:
                raise ValueError(
                    f"label file {path!r} line {number}: expected at least 8 fields (type "
                    f"truncated occluded alpha left top right bottom ...), got {len(parts)}"
                )
            try:
                x1, y1, x2, y2 = (float(v) for v in parts[4:8])
            except ValueError:
                raise ValueError(
                    f"label file {path!r} line {number}: the box {parts[4:8]} is not four numbers"
                ) from None
            if not (x2 >= x1 and y2 >= y1):
                raise ValueError(
                    f"label file {path!r} line {number}: box ({x1}, {y1}, {x2}, {y2}) has "
                    "right < left or bottom < top"
                )
            objects.append((parts[0].lower(), x1, y1, x2, y2))
    return objects


def to_boxes(
    objects: list[tuple[str, float, float, float, float]], classes: dict[str, int]
) -> list[Box]:
    """Boxes of the objects whose type is a known class (others are left out)."""
    return [
        [float(classes[kind]), x1, y1, x2, y2]
        for kind, x1, y1, x2, y2 in objects
        if kind in classes
    ]
