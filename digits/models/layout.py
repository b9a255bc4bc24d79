"""Where a model's files are: ``models/<job>/`` in the artifact store, and the download archive.

The train service writes them, the view service loads them, the gateway downloads and checks
them; an archive holds the same names at its root (snapshots beside the rest, not under
``snapshots/``).
"""

from __future__ import annotations

import re

INFO = "info.json"  # task, input shape, scale, mean mode: what inference must redo
NETWORK = "network.json"  # the Keras model's JSON
LABELS = "labels.txt"
MODEL_FILES = (INFO, LABELS, NETWORK)
MEAN_FILES = ("mean.npy", "mean.png")  # the dataset's mean image (under datasets/<id>/)
SAVED_MODEL = "saved_model/"  # the final model's SavedModel export
SNAPSHOT_NAME = re.compile(r"^epoch-(\d+(?:\.\d+)?)\.keras$")
DEFAULT_SCALE = 1.0 / 255.0  # the input scale of a model whose info.json does not say


def snapshot_name(epoch: float) -> str:
    """The file name of the snapshot after ``epoch``: ``epoch-2.keras``, ``epoch-0.5.keras``."""
    return f"epoch-{epoch:g}.keras"


def model_key(job_id: str, name: str) -> str:
    """The store key of a model's file."""
    return f"models/{job_id}/{name}"


def snapshot_key(job_id: str, epoch: float) -> str:
    """The store key of a model's snapshot after ``epoch``."""
    return model_key(job_id, f"snapshots/{snapshot_name(epoch)}")
