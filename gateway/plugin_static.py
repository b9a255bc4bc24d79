"""View extensions' static files: ``/extensions/view/<id>/static/<path>``, from their static/."""

from __future__ import annotations

import sys
from pathlib import Path

from flask import Blueprint, abort, send_from_directory
from flask.typing import ResponseReturnValue

from digits.extensions import view as view_extensions

bp = Blueprint("plugin_static", __name__)


def static_folder(extension_id: str) -> Path | None:
    """The ``static/`` folder beside the module of view ``extension_id``, if it has one."""
    try:
        cls = view_extensions.get_extension(extension_id)
    except view_extensions.UnknownExtension:
        return None
    folders = []
    top = cls.__module__.split(".")[0]
    for name in (cls.__module__, top):  # the class's module, and its top-level package
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and (name != top or Path(path).name == "__init__.py"):
            folders.append(Path(path).parent)
    # A plugin keeps static/ in its package folder (beside view.py or __init__.py).
    return next((f / "static" for f in folders if (f / "static").is_dir()), None)


@bp.get("/extensions/view/<ext_id>/static/<path:filename>")
def view_static(ext_id: str, filename: str) -> ResponseReturnValue:
    """A static file of a view extension; 404 for an unknown id or a path outside static/."""
    folder = static_folder(ext_id)
    if folder is None:
        abort(404)
    # send_from_directory joins with werkzeug's safe_join: "..", absolute paths give 404.
    return send_from_directory(folder, filename, max_age=3600)
