"""The whole New Model form checked (every training option) and model.create published.

Shared by the HTML pages and the JSON API: the same field names as DIGITS, the same checks as the
training worker (its own option parsers, which import no TensorFlow), so a bad value is named at
the gateway instead of failing the job later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import current_app

from digits import bus, events
from digits.jobs import INITIALIZED, STATUS_NAMES, Job, JobNotFound, new_job_id
from gateway.forms import FormErrors, model_form
from train_service.augment import Augment
from train_service.lr_formula import DIGITS_FORM_DEFAULTS, policy_from_form
from train_service.options import TrainOptions

CLASSIFICATION = "image-classification"
AUG_NUMBERS = ("aug_rot", "aug_scale", "aug_noise", "aug_hsv_h", "aug_hsv_s", "aug_hsv_v")
# Fields that only mean something for one network method: dropped for the others.
METHOD_FIELDS = {
    "standard": ("standard_networks",),
    "custom": ("custom_network", "custom_network_type"),
    "previous": ("previous_networks", "previous_network_snapshot"),
    "pretrained": ("previous_networks", "previous_network_snapshot"),
}


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
    try:
        TrainOptions.from_form(single)
    except ValueError as exc:
        field = _field_of(str(exc), tuple(form) + ("custom_network_type",), "method")
        if field not in errors:
            errors[field] = [str(exc)]
    if form.get("method") == "custom" and form.get("custom_network_type", "json") == "json":
        try:
            json.loads(str(form.get("custom_network") or ""))
        except ValueError as exc:
            errors.setdefault("custom_network", []).append(
                f"custom_network is not a Keras model JSON: {exc}"
            )


def check(
    form: Mapping[str, Any], jobs: Mapping[str, Job], *, generic: bool
) -> tuple[str, Job, str, dict[str, Any]]:
    """(name, dataset job, group, checked form), or FormErrors naming every bad field.

    ``jobs`` maps job ids to the records the form may refer to (datasets and models).
    """
    form = cleaned(form)
    errors: dict[str, list[str]] = {}
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
    previous_id = str(form.get("previous_networks") or "")
    if previous_id and "previous_networks" not in errors:
        previous = jobs.get(previous_id)
        snapshots = [float(s) for s in (previous.extra.get("snapshots") or [])] if previous else []
        if previous is None or previous.type != "model":
            errors["previous_networks"] = [f"no model with id {previous_id!r}"]
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
    from gateway.api import _pending
    from gateway.app import bus_of

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
    client = bus_of(current_app)
    assert client.nc is not None
    client.call(bus.publish_event(client.nc.jetstream(), command), timeout=15)
    # The JSON API and the pages answer for the job until the scheduler stores its record.
    summary = {"id": job_id, "name": name, "status": STATUS_NAMES[INITIALIZED]}
    _pending().add(job_id, summary | {"type": "model", "owner": owner, "group": group})
    return job_id


def related_jobs(form: Mapping[str, Any]) -> dict[str, Job]:
    """The dataset and previous model the form names, read from the job store."""
    from gateway.app import bus_of

    client = bus_of(current_app)
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
