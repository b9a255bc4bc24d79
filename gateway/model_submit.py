"""The whole New Model form checked (every training option) and model.create published.

Shared by the HTML pages and the JSON API: the same field names as DIGITS, the same checks as the
training worker (its own option parsers, which import no TensorFlow), so a bad value is named at
the gateway instead of failing the job later.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import current_app
from werkzeug.datastructures import FileStorage

from digits import bus, events, uploads
from digits.jobs import INITIALIZED, STATUS_NAMES, Job, JobNotFound, new_job_id
from digits.models.archive import MAX_MEMBERS, MAX_TOTAL_BYTES, safe_name
from digits.models.augment import Augment
from digits.models.layout import INFO, MEAN_FILES, MODEL_FILES, SAVED_MODEL, SNAPSHOT_NAME
from digits.models.lr_policies import DIGITS_FORM_DEFAULTS, policy_from_form
from digits.models.options import TrainOptions
from gateway import context, ownership
from gateway.forms import FormErrors, model_form

CLASSIFICATION = events.CLASSIFICATION
AUG_NUMBERS = ("aug_rot", "aug_scale", "aug_noise", "aug_hsv_h", "aug_hsv_s", "aug_hsv_v")
# Fields that only mean something for one network method: dropped for the others.
METHOD_FIELDS = {
    "standard": ("standard_networks",),
    "custom": ("custom_network", "custom_network_type"),
    "previous": ("previous_networks", "previous_network_snapshot"),
    "pretrained": ("previous_networks", "previous_network_snapshot", "pretrained_archive"),
}
# A pretrained model uploaded as the archive that /models/<id>/download makes.
ARCHIVE_FIELD = "pretrained_archive_file"
ARCHIVE_PREFIX = f"{uploads.PREFIX}pretrained/"
DEFAULT_ARCHIVE_BYTES = 512 << 20  # app config PRETRAINED_MAX_BYTES overrides it
ARCHIVE_FILES = (*MODEL_FILES, *MEAN_FILES)
CHUNK = 1 << 20
# Stands in for the upload's key in the checks, until the upload is stored.
UPLOADED = f"{ARCHIVE_PREFIX}upload.tar.gz"
ARCHIVE_NAME = re.compile(r"^[0-9a-f]{32}\.tar\.gz$")  # the name store_archive gives


def is_classification(dataset: Job) -> bool:
    """Whether a dataset is the image classification extension's (records without one are)."""
    return (dataset.extension or CLASSIFICATION) == CLASSIFICATION


def _field_of(message: str, known: tuple[str, ...], fallback: str) -> str:
    """The form field a worker-side message starts with (they all name it first)."""
    first = message.split(" ", 1)[0]
    return first if first in known else fallback


def cleaned(form: Mapping[str, Any]) -> dict[str, Any]:
    """The posted fields without empty values or the other network methods' fields."""
    out = {k: v for k, v in form.items() if not (isinstance(v, str) and not v.strip())}
    method = str(out.get("method") or "standard")
    for other, names in METHOD_FIELDS.items():
        if other != method:
            for name in names:
                if name not in METHOD_FIELDS.get(method, ()):
                    out.pop(name, None)
    return out


def _first(value: Any) -> Any:
    """The first value of a DIGITS sweep ("0.01,0.001"), for checks that take one value."""
    return str(value).split(",")[0].strip() if isinstance(value, str) else value


def _check_options(form: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """The learning-rate policy, augmentation and the rest as the training worker reads them."""
    single = {**form, "learning_rate": _first(form.get("learning_rate"))}
    single["batch_size"] = _first(form.get("batch_size"))
    try:
        policy_from_form(single)
    except ValueError as exc:
        errors.setdefault(_field_of(str(exc), tuple(DIGITS_FORM_DEFAULTS), "lr_policy"), []).append(
            str(exc)
        )
    bad_aug = False
    for name in AUG_NUMBERS:
        if name in form:
            try:
                float(form[name])
            except (TypeError, ValueError):
                errors.setdefault(name, []).append(f"{name} {form[name]!r} is not a number")
                bad_aug = True
    if not bad_aug:
        try:
            Augment.from_form(form)
        except ValueError as exc:
            names = ("aug_flip", "aug_quad_rot", *AUG_NUMBERS)
            errors.setdefault(_field_of(str(exc), names, "aug_flip"), []).append(str(exc))
    message = _options_error(single)
    if message is not None:
        field = _field_of(message, tuple(form) + ("custom_network_type",), "method")
        if field not in errors:
            errors[field] = [message]
    if form.get("method") == "custom" and form.get("custom_network_type", "json") == "json":
        try:
            json.loads(str(form.get("custom_network") or ""))
        except ValueError as exc:
            errors.setdefault("custom_network", []).append(
                f"custom_network is not a Keras model JSON: {exc}"
            )


def _options_error(single: dict[str, Any]) -> str | None:
    """What the training worker's option parser says of the form, if it refuses it."""
    try:
        TrainOptions.from_form(single)
    except ValueError as exc:
        return str(exc)
    return None


def archive_prefix(owner: str) -> str:
    """Where ``owner``'s uploaded archives are kept in the artifact store."""
    return f"{ARCHIVE_PREFIX}{owner}/"


def _archive_errors(
    form: dict[str, Any], errors: dict[str, list[str]], owner: str, uploading: bool
) -> None:
    """An uploaded archive (one of the caller's own) stands instead of previous_networks."""
    archive = str(form.get("pretrained_archive") or "")
    if not archive:
        return
    own = archive_prefix(owner)
    name = archive.removeprefix(own)
    if form.get("previous_networks"):
        errors.setdefault(ARCHIVE_FIELD, []).append(
            f"give previous_networks ({form['previous_networks']!r}) or {ARCHIVE_FIELD}, not both"
        )
    elif not (archive == UPLOADED and uploading) and not (
        archive.startswith(own) and ARCHIVE_NAME.match(name) is not None
    ):
        errors.setdefault("pretrained_archive", []).append(
            f"pretrained_archive {archive!r} is not one of your uploaded archives"
            f" ({own}<id>.tar.gz)"
        )


def check(
    form: Mapping[str, Any],
    jobs: Mapping[str, Job],
    *,
    generic: bool,
    owner: str,
    uploading: bool = False,
) -> tuple[str, Job, str, dict[str, Any]]:
    """(name, dataset job, group, checked form), or FormErrors naming every bad field.

    ``jobs`` maps job ids to the records the form may refer to (datasets and models). With
    method "pretrained", ``pretrained_archive`` (an uploaded archive's store key) may stand
    instead of previous_networks, if it is one of ``owner``'s (``uploading``: the page's
    upload of this request, whose key stands in as UPLOADED until it is stored).
    """
    form = cleaned(form)
    errors: dict[str, list[str]] = {}
    _archive_errors(form, errors, owner, uploading)
    name, dataset_id, group, checked = "", str(form.get("dataset") or ""), "", {}
    try:
        name, dataset_id, group, checked = model_form(form)
    except FormErrors as exc:
        errors.update(exc.errors)
    _check_options(form, errors)
    dataset = jobs.get(dataset_id)
    if dataset_id and (dataset is None or dataset.type != "dataset"):
        errors.setdefault("dataset", []).append(f"no dataset with id {dataset_id!r}")
    elif dataset is not None and generic == is_classification(dataset):
        wanted = "another extension" if generic else CLASSIFICATION
        errors.setdefault("dataset", []).append(
            f"dataset {dataset.name!r} ({dataset_id}) is {dataset.extension!r}, not {wanted}"
        )
    elif dataset is not None and (reason := ownership.refusal(dataset, "train on")):
        errors.setdefault("dataset", []).append(reason)
    previous_id = str(form.get("previous_networks") or "")
    if previous_id and "previous_networks" not in errors:
        previous = jobs.get(previous_id)
        snapshots = [float(s) for s in (previous.extra.get("snapshots") or [])] if previous else []
        if previous is None or previous.type != "model":
            errors["previous_networks"] = [f"no model with id {previous_id!r}"]
        elif reason := ownership.refusal(previous, "start from"):
            errors["previous_networks"] = [reason]
        elif not snapshots:
            errors["previous_networks"] = [f"model {previous_id} has no snapshot yet"]
        elif (
            "previous_network_snapshot" in checked
            and float(checked["previous_network_snapshot"]) not in snapshots
        ):
            shown = ", ".join(f"{s:g}" for s in snapshots)
            errors.setdefault("previous_network_snapshot", []).append(
                f"previous_network_snapshot {form['previous_network_snapshot']!r} is not one of"
                f" model {previous_id}'s snapshots: {shown}"
            )
    if errors:
        raise FormErrors(errors)
    assert dataset is not None
    return name, dataset, group, checked


def submit(name: str, dataset: Job, group: str, checked: dict[str, Any], owner: str) -> str:
    """Publish model.create for a checked form; the new job's id."""
    job_id = new_job_id()
    command = events.ModelCreate(
        name=name,
        dataset_id=dataset.id,
        extension=dataset.extension or CLASSIFICATION,
        form=checked,
        group=group,
        owner=owner,
        job_id=job_id,
    )
    client = context.bus_client()
    assert client.nc is not None
    client.call(bus.publish_event(client.nc.jetstream(), command), timeout=15)
    # The JSON API and the pages answer for the job until the scheduler stores its record.
    summary = {"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]}
    context.pending().add(job_id, summary | {"type": "model", "owner": owner, "group": group})
    return job_id


def related_jobs(form: Mapping[str, Any]) -> dict[str, Job]:
    """The dataset and previous model the form names, read from the job store."""
    client = context.bus_client()
    assert client.jobs is not None
    found: dict[str, Job] = {}
    for key in ("dataset", "previous_networks"):
        job_id = str(form.get(key) or "").strip()
        if job_id and job_id not in found:
            try:
                found[job_id] = client.call(client.jobs.get(job_id))
            except JobNotFound:
                pass
    return found


def archive_limit() -> int:
    """The largest pretrained archive accepted, in bytes (app config PRETRAINED_MAX_BYTES)."""
    return int(current_app.config.get("PRETRAINED_MAX_BYTES") or DEFAULT_ARCHIVE_BYTES)


def receive_archive(upload: FileStorage) -> Path:
    """The upload copied to a temporary file (chunk by chunk) and checked; FormErrors say why not.

    The caller deletes the file.
    """
    name = upload.filename or ""
    if not name.endswith((".tar.gz", ".tgz")):
        raise FormErrors(
            {ARCHIVE_FIELD: [f"{ARCHIVE_FIELD} {name!r} is not a .tar.gz (a downloaded model)"]}
        )
    limit = archive_limit()
    fd, tmp = tempfile.mkstemp(prefix="digits-pretrained-", suffix=".tar.gz")
    path = Path(tmp)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := upload.stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise FormErrors(
                        {ARCHIVE_FIELD: [f"{ARCHIVE_FIELD} {name!r} exceeds {limit} bytes"]}
                    )
                out.write(chunk)
        problem = archive_problem(path)
        if problem:
            raise FormErrors({ARCHIVE_FIELD: [f"{ARCHIVE_FIELD} {name!r}: {problem}"]})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def archive_problem(path: Path) -> str | None:
    """What keeps a file from being a model archive in the download format, or None."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            members, problem = _members(tar)
            if problem:
                return problem
            # The SavedModel export (saved_model/...) is allowed and not looked into.
            names = [m.name.removeprefix("./") for m in members]
            unknown = [
                n
                for n in names
                if n not in ARCHIVE_FILES and not SNAPSHOT_NAME.fullmatch(n) and not _exported(n)
            ]
            if unknown:
                return (
                    f"unexpected members {unknown[:5]}; a model archive holds epoch-N.keras, "
                    + (", ".join(ARCHIVE_FILES))
                    + f" and {SAVED_MODEL}..."
                )
            snapshots = [m for m in members if SNAPSHOT_NAME.fullmatch(m.name.removeprefix("./"))]
            if not snapshots:
                return "it holds no snapshot (epoch-N.keras)"
            if INFO not in names:
                return "it has no info.json"
            info = members[names.index(INFO)]
            if info.size > CHUNK:
                return f"info.json of {info.size} bytes is too big"
            try:
                if not isinstance(json.loads(_read(tar, info)), dict):
                    return "info.json is not a JSON object"
            except ValueError as exc:
                return f"info.json is not JSON: {exc}"
            for member in snapshots:
                if _read(tar, member, 4) != b"PK\x03\x04":
                    return f"{member.name} is not a Keras model file (.keras, a zip)"
    except (tarfile.TarError, EOFError, OSError) as exc:
        return f"not a gzip-compressed tar archive: {exc}"
    return None


def _members(tar: tarfile.TarFile) -> tuple[list[tarfile.TarInfo], str | None]:
    """The archive's members, read header by header within the caps; or what is wrong."""
    members: list[tarfile.TarInfo] = []
    unsafe: list[str] = []
    total = 0
    for member in tar:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            return members, f"it has more than {MAX_MEMBERS} members"
        total += member.size
        if total > MAX_TOTAL_BYTES:
            return members, f"it unpacks to over {MAX_TOTAL_BYTES} bytes"
        name = member.name.removeprefix("./")
        nested = _exported(name) and safe_name(name)
        if not (member.isfile() and ("/" not in name or nested)) and not (
            member.isdir() and nested
        ):
            unsafe.append(member.name)
    if unsafe:
        return members, (
            f"only plain files at the top level or under {SAVED_MODEL} belong in it, "
            f"not {unsafe[:5]}"
        )
    return members, None


def _exported(name: str) -> bool:
    """Whether ``name`` is the SavedModel folder or inside it."""
    return f"{name.rstrip('/')}/".startswith(SAVED_MODEL)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, size: int = -1) -> bytes:
    extracted = tar.extractfile(member)
    assert extracted is not None  # a regular file
    return extracted.read(size)


def store_archive(path: Path, owner: str) -> str:
    """Put a checked archive in the artifact store; its key (under ``archive_prefix(owner)``)."""
    key = f"{archive_prefix(owner)}{uuid.uuid4().hex}.tar.gz"
    context.bus_client().call(context.artifact_store().put_file(key, path), timeout=600)
    return key
