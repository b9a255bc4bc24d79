"""The classification dataset form's values: defaults, re-rendering without secrets, clones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app

from digits.jobs import Job
from digits.secrets import SECRET_FIELDS
from gateway.forms import FormErrors, redacted

DEFAULTS = {
    "method": "folder",
    "resize_channels": "3",
    "resize_width": "256",
    "resize_height": "256",
    "resize_mode": "squash",
    "encoding": "png",
    "backend": "lmdb",
    "compression": "none",
    "folder_pct_val": "25",
    "folder_pct_test": "0",
    "s3_pct_val": "25",
    "s3_pct_test": "0",
    "s3_region": "us-east-1",
    "textfile_shuffle": "on",
}
# File inputs: the browser cannot be given their content back.
UPLOADS = (
    "textfile_train_images",
    "textfile_val_images",
    "textfile_test_images",
    "textfile_labels_file",
)
CHECKBOXES = (
    "has_val_folder",
    "has_test_folder",
    "textfile_use_local_files",
    "textfile_use_val",
    "textfile_use_test",
    "textfile_shuffle",
    "s3_watch",
)
# Fields of the page that are not the dataset's: they never reach the command.
PAGE_ONLY = ("clone_of", "preview_path", "preview_image", "data_roots", "is_inference_db")
RESIZE_CHOICES = (
    ("squash", "Squash"),
    ("crop", "Crop"),
    ("fill", "Fill"),
    ("half_crop", "Half crop, half fill"),
)
ENCODING_CHOICES = (("png", "PNG (lossless)"), ("jpg", "JPEG (lossy, 90%)"), ("none", "None"))


def shown_values(form: Mapping[str, Any]) -> dict[str, str]:
    """What the form may show again: no secrets, no uploads, every value as text."""
    out: dict[str, str] = {}
    for key, value in redacted(form).items():
        if key in UPLOADS or key == "csrf_token" or value is None:
            continue
        if isinstance(value, bool):
            out[key] = "on" if value else ""
        else:
            out[key] = str(value)
    return out


def new_values() -> dict[str, str]:
    """A blank form's values."""
    return dict(DEFAULTS)


def posted_values(form: Mapping[str, Any]) -> dict[str, str]:
    """The entered values, to re-render after an error (unchecked boxes stay unchecked)."""
    values = {k: v for k, v in DEFAULTS.items() if k not in CHECKBOXES}
    values.update(shown_values(form))
    return values


def clone_values(job: Job) -> dict[str, str]:
    """The form of ``job`` to start a new dataset from (its credentials stay behind)."""
    values = {k: v for k, v in DEFAULTS.items() if k not in CHECKBOXES}
    values.update(shown_values(job.form))
    values["dataset_name"] = job.name
    values["group_name"] = job.group
    values["clone_of"] = job.id
    return values


def upload_lines(job: Job) -> dict[str, int]:
    """How many lines each uploaded text file of ``job`` had (they must be uploaded again)."""
    return {
        k: len(str(job.form[k]).splitlines()) for k in UPLOADS if isinstance(job.form.get(k), str)
    }


def _field_of(message: str, form: Mapping[str, Any]) -> str:
    """The field an extension's error is about: the one it names, else the one whose value."""
    for key in sorted(form, key=len, reverse=True):
        if key in message:
            return key
    for key, value in form.items():
        if isinstance(value, str) and value and repr(value) in message:
            return key
    return "method"


def deep_check(checked: dict[str, Any]) -> None:
    """Let the extension check paths and options where this gateway sees the data roots."""
    roots = current_app.config["SETTINGS"].data_roots
    if not roots:
        return  # the ingest service checks them, and fails the job with the reason
    from digits.extensions.data.imageClassification import DataIngestion

    try:
        DataIngestion(data_roots=roots, **checked)
    except ValueError as exc:
        raise FormErrors({_field_of(str(exc), checked): [str(exc)]}) from None


def reused_secret(checked: dict[str, Any], clone_of: Job | None, owner: str) -> dict[str, Any]:
    """An S3 clone without new keys keeps using its original's sealed keys (same owner only)."""
    if (
        clone_of is None
        or checked.get("method") != "s3"
        or any(checked.get(k) for k in SECRET_FIELDS)
        or clone_of.owner != owner
        or not clone_of.form.get("secret_ref")
    ):
        return checked
    return {**checked, "secret_ref": clone_of.form["secret_ref"]}
