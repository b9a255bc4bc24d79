"""What a model learns, decided from its dataset: classification, segmentation or regression.

Classification datasets have integer labels; generic datasets (DIGITS's /models/images/generic)
have array labels: an (H, W) integer class map per image is segmentation, a float vector is
regression. A ``task`` form field overrides the guess (and is checked against the labels).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from digits import events
from digits.dataset import Dataset, Label, sample_label
from digits.models.layout import DEFAULT_SCALE

TASKS = ("classification", "segmentation", "regression")
CLASSIFICATION_EXTENSION = events.CLASSIFICATION
GENERIC_EXTENSION = events.GENERIC
DEFAULT_NETWORKS = {"classification": "lenet", "segmentation": "fcn", "regression": "regression"}
MAX_SCANNED = 1000  # labels read to count the classes of a segmentation set without labels
CLASSIFICATION_SCALE = DEFAULT_SCALE  # what inference assumes of a model without info.json too


@dataclass(frozen=True)
class Task:
    """The task, its outputs and how inputs are scaled."""

    kind: str
    outputs: int  # classes (classification, segmentation) or values (regression)
    label_shape: tuple[int, ...]  # () classification, (H, W) segmentation, (k,) regression
    scale: float  # inputs are multiplied by this after the mean is subtracted
    mean: str  # none, image or pixel
    network: str  # the standard network, when the method is "standard"

    @property
    def generic(self) -> bool:
        """Whether this is a generic (array label) model."""
        return self.kind != "classification"


def _labels(dataset: Dataset, limit: int) -> list[Label]:
    """Up to ``limit`` labels of train_db, without decoding the images."""
    # LMDB opens a file once a process: share the training pipeline's readers (shard_cache).
    from train_service.shard_cache import acquire, release

    found: list[Label] = []
    held: set[str] = set()
    try:
        for path in dataset.shard_paths("train_db"):
            for raw in itertools.islice(acquire(str(path), held).raw(), limit - len(found)):
                found.append(sample_label(raw))
            if len(found) >= limit:
                break
    finally:
        release(held)
    return found


def _feature_hw(dataset: Dataset, first_feature_shape: tuple[int, ...] | None) -> tuple[int, int]:
    shape = list(dataset.manifest.feature_shape) or list(first_feature_shape or ())
    if len(shape) < 2:
        raise ValueError(f"dataset {dataset.url} has no feature shape")
    return int(shape[0]), int(shape[1])


def _is_mask(label: Label, hw: tuple[int, int]) -> bool:
    if not isinstance(label, np.ndarray) or label.dtype.kind not in "biu":
        return False
    squeezed = label.shape[:2] == hw and (label.ndim == 2 or label.shape[2:] == (1,))
    return label.ndim in (2, 3) and squeezed


def _segmentation_classes(dataset: Dataset) -> int:
    labels = dataset.labels or list(dataset.manifest.extra.get("class_labels") or [])
    if len(labels) >= 2:
        return len(labels)
    declared = dataset.manifest.extra.get("num_classes")
    if isinstance(declared, int) and declared >= 2:
        return declared
    top = max(int(np.max(lab)) for lab in _labels(dataset, MAX_SCANNED))
    return max(top + 1, 2)


def detect(dataset: Dataset, form: dict[str, Any]) -> Task:
    """The task of a model on ``dataset``; ValueError names a bad ``task`` or label."""
    asked = str(form.get("task") or "").strip().lower()
    if asked and asked not in TASKS:
        raise ValueError(f"task {form.get('task')!r} is not one of {', '.join(TASKS)}")
    first = _labels(dataset, 1)
    if not first:
        raise ValueError(f"dataset {dataset.url} has no train_db samples")
    label = first[0]
    hw = _feature_hw(dataset, None)
    guess = (
        "classification"
        if isinstance(label, int)
        else "segmentation"
        if _is_mask(label, hw)
        else "regression"
    )
    kind = asked or guess
    shown = f"{label.dtype} {label.shape}" if isinstance(label, np.ndarray) else repr(label)
    if kind == "classification" and not isinstance(label, int):
        raise ValueError(f"task classification needs integer labels, not {shown}")
    if kind == "segmentation" and not _is_mask(label, hw):
        raise ValueError(
            f"task segmentation needs integer {hw[0]}x{hw[1]} class maps as labels, not {shown}"
        )
    if kind == "regression" and (
        not isinstance(label, np.ndarray) or label.ndim != 1 or label.dtype.kind not in "biuf"
    ):
        raise ValueError(f"task regression needs numeric vector labels, not {shown}")
    if kind == "classification":
        outputs, label_shape = max(len(dataset.labels), 2), ()
    elif kind == "segmentation":
        outputs, label_shape = _segmentation_classes(dataset), hw
    else:
        outputs, label_shape = int(label.shape[0]), tuple(label.shape)
    mean = str(form.get("use_mean") or "image").lower()
    if kind != "classification":
        from train_service.data import value_range

        scale = 1.0 / value_range(dataset.manifest.feature_dtype)
        if not form.get("use_mean"):  # generic sets often come without a mean image
            mean = "image" if dataset.mean() is not None else "none"
    else:
        scale = CLASSIFICATION_SCALE
    network = str(form.get("standard_networks") or DEFAULT_NETWORKS[kind]).lower()
    return Task(kind, outputs, label_shape, scale, mean, network)


def check_model(model: Any, task: Task) -> None:
    """Raise ValueError if the network's output does not fit the task's labels."""
    shape = tuple(model.outputs[0].shape[1:]) if getattr(model, "outputs", None) else ()
    want: tuple[Any, ...]
    if task.kind == "segmentation":
        want = (*tuple(model.input_shape[1:3]), task.outputs)
        ok = len(shape) == 3 and shape == want
    elif task.kind == "regression":
        want, ok = (task.outputs,), shape == (task.outputs,)
    else:
        want, ok = (task.outputs,), len(shape) == 1
    if not ok:
        raise ValueError(
            f"the network's output has shape {shape}, but {task.kind} labels need {want}; "
            f"for {task.kind} use the {DEFAULT_NETWORKS[task.kind]!r} network"
        )
