"""What the dataset page shows from the stored files: counts, histogram, gallery, resize preview."""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from digits.dataset import Manifest, ShardReader, decode_sample, sample_label
from digits.paths import confine
from digits.utils.image import SUPPORTED_EXTENSIONS, load_image, resize_image

PAGE_SIZE = 24
MAX_PREVIEW_SIDE = 1024  # the preview resizes; a larger target is refused, not rendered


@dataclass(frozen=True)
class Thumb:
    """One sample of the gallery: a data: URI and its label."""

    src: str
    label: int | None
    label_name: str


def histogram(manifest: Manifest) -> dict[str, Any]:
    """Per label and stage: the count and its bar width (percent of the stage's largest)."""
    stages = manifest.stage_names()
    names = list(manifest.labels)
    keys = {name: [name, str(i)] for i, name in enumerate(names)}
    for st in stages:  # labels only in the histogram (no labels.txt) come last
        names += [k for k in manifest.stages[st].histogram if k not in keys and k not in names]
    rows = []
    peak = {s: max(manifest.stages[s].histogram.values(), default=0) or 1 for s in stages}
    for i, name in enumerate(names):
        cells = []
        for st in stages:
            hist = manifest.stages[st].histogram
            count = sum(hist.get(k, 0) for k in keys.get(name, [name]))
            cells.append({"count": count, "pct": round(100 * count / peak[st], 1)})
        rows.append(
            {"index": i if i < len(manifest.labels) else None, "name": name, "cells": cells}
        )
    return {"stages": stages, "rows": rows}


def _data_uri(raw: bytes) -> str:
    """A sample as a data: URI; PNG/JPEG samples are shown as stored, others encoded as PNG."""
    fields = msgspec.msgpack.decode(raw)
    encoding, dtype = fields.get("encoding"), fields.get("dtype")
    if encoding in ("png", "jpg") and dtype == "uint8":
        mime = "png" if encoding == "png" else "jpeg"
        return f"data:image/{mime};base64,{base64.b64encode(fields['data']).decode('ascii')}"
    feature, _ = decode_sample(raw)
    return png_uri(feature)


def png_uri(feature: np.ndarray) -> str:
    """A HxWxC array as a PNG data: URI (1 or 3 channels shown; others as their first)."""
    arr = np.asarray(feature)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = ((arr - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr if arr.shape[2] == 3 else arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI."""
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def gallery(
    shard_paths: list[Path], labels: list[str], label: int | None, page: int, size: int = PAGE_SIZE
) -> list[Thumb]:
    """The ``page``-th (from 1) run of ``size`` samples of a stage, only ``label`` if given."""
    skip, found = (page - 1) * size, []
    for path in shard_paths:
        with ShardReader(path) as reader:
            for raw in reader.raw():
                lab = sample_label(raw)
                index = lab if isinstance(lab, int) else None
                if label is not None and index != label:
                    continue
                if skip:
                    skip -= 1
                    continue
                name = labels[index] if index is not None and index < len(labels) else str(index)
                found.append(Thumb(_data_uri(raw), index, "" if index is None else name))
                if len(found) >= size:
                    return found
    return found


def stage_total(manifest: Manifest, stage: str, label: int | None) -> int:
    """How many samples of ``stage`` the gallery pages through."""
    info = manifest.stages[stage]
    if label is None:
        return info.count
    name = manifest.labels[label] if label < len(manifest.labels) else str(label)
    return info.histogram.get(name, 0) or info.histogram.get(str(label), 0)


def first_image(folder: str, roots: tuple[str, ...], limit: int = 2000) -> Path | None:
    """The first image under ``folder`` (sorted, a few levels deep), for a default preview."""
    root = confine(folder, roots)
    seen = 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if name.lower().endswith(SUPPORTED_EXTENSIONS):
                return Path(dirpath) / name
            if seen > limit:
                return None
    return None


def resized_png(source: Path | bytes, width: int, height: int, channels: int, mode: str) -> bytes:
    """The image resized as the dataset would store it, as PNG bytes; ValueError says why not."""
    if not (1 <= width <= MAX_PREVIEW_SIDE and 1 <= height <= MAX_PREVIEW_SIDE):
        raise ValueError(
            f"preview size {width}x{height} is out of range 1..{MAX_PREVIEW_SIDE} per side"
        )
    image = load_image(source, channels)
    feature = resize_image(image, height, width, channels, mode, rng=np.random.default_rng(0))
    arr = feature[:, :, 0] if feature.shape[2] == 1 else feature
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()
