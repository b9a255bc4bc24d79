"""The trained model as a TensorFlow SavedModel, stored file by file under ``saved_model/``.

The ``.keras`` snapshots need Keras to load; a SavedModel serves from TensorFlow alone (TF
Serving, ``tf.saved_model.load``, ``keras.layers.TFSMLayer``). ``model.export`` traces the model
on the TensorFlow backend only, so other backends skip it with a logged note.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import keras

from digits.models.layout import SAVED_MODEL

log = logging.getLogger(__name__)

FOLDER = SAVED_MODEL.rstrip("/")  # under models/<job>/ in the store, and in the download archive


class Sink(Protocol):
    """Where model files go (train_service.trainer.Bridge)."""

    def put_file(self, key: str, path: Path) -> str:
        """Store a file under the model's folder; its URL."""
        ...


def saved_model(model: Any, tmp: Path, sink: Sink) -> dict[str, Any] | None:
    """Export ``model`` and store its files as ``saved_model/...``; what info.json says of it.

    None when the backend is not TensorFlow or the export fails (logged): the ``.keras``
    snapshots stay the model's files either way.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        log.info("no SavedModel export: the Keras backend is %s, not tensorflow", backend)
        return None
    folder = tmp / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    try:
        model.export(str(folder), format="tf_saved_model", verbose=False)
    except Exception:  # noqa: BLE001 - a custom layer TF cannot trace; the .keras file stays
        log.warning("SavedModel export failed; the archive will hold the .keras files only")
        log.debug("export error", exc_info=True)
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        sink.put_file(f"{FOLDER}/{path.relative_to(folder).as_posix()}", path)
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "path": f"{FOLDER}/",
        "files": len(files),
        "endpoint": "serve",
        "input_shape": list(model.input_shape[1:]),
    }
