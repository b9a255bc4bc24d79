"""Runs side by side: 2-8 model jobs' training curves, best and final metrics, differing options.

The curves are the histories the model page graphs (``model_progress``: the jobs' TrainProgress
events on DIGITS_EVT); the compare page draws them on shared axes and the JSON route returns them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from digits.jobs import Job, JobNotFound
from gateway import model_progress
from gateway.context import bus_client
from gateway.forms import redacted
from gateway.pages.jobdata import find_model

MIN_RUNS, MAX_RUNS = 2, 8
READ_TIMEOUT_S = 60  # all the runs' histories together


class CompareError(ValueError):
    """A bad choice of runs; the message names the bad value."""


def chosen_ids(values: Sequence[str]) -> list[str]:
    """The ``job_id`` values, blanks dropped, checked: no duplicate, 2 to 8 of them."""
    ids = [v.strip() for v in values if v.strip()]
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            raise CompareError(f"job_id {job_id!r} is given twice: name each model once")
        seen.add(job_id)
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        raise CompareError(
            f"compare takes {MIN_RUNS} to {MAX_RUNS} models (job_id), got {len(ids)}"
            + (f": {', '.join(ids)}" if ids else "")
        )
    return ids


def find_runs(ids: Sequence[str]) -> list[Job]:
    """The model jobs (pending ones too); any signed-in user may compare any models."""
    runs = []
    for job_id in ids:
        job, _ = find_model(job_id)
        if job is None:
            try:
                other = bus_client().get_job(job_id)
            except JobNotFound:
                raise CompareError(f"job_id {job_id!r}: no model with that id") from None
            raise CompareError(f"job_id {job_id!r} is a {other.type}, not a model")
        runs.append(job)
    return runs


def histories(jobs: Sequence[Job]) -> list[list[dict[str, Any]]]:
    """Each job's progress points, read from the stream together."""
    client = bus_client()
    assert client.nc is not None
    js = client.nc.jetstream()

    async def read() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*(model_progress.read_all(js, j.id) for j in jobs)))

    return client.call(read(), timeout=READ_TIMEOUT_S)


def curves(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """[epoch, value] pairs per metric family: loss and accuracy (train, val), learning rate."""
    found: dict[str, Any] = {
        "loss": {"train": [], "val": []},
        "accuracy": {"train": [], "val": []},
        "learning_rate": [],
    }
    for p in points:
        metrics, val = p["metrics"], p["phase"] == "val"
        phase = "val" if val else "train"
        for family in ("loss", "accuracy"):
            value = metrics.get(f"val_{family}" if val else family)
            if value is not None:
                found[family][phase].append([p["epoch"], value])
        if not val and p["learning_rate"] is not None:
            found["learning_rate"].append([p["epoch"], p["learning_rate"]])
    return found


def _best(pairs: list[list[float]], lowest: bool) -> dict[str, float] | None:
    if not pairs:
        return None
    epoch, value = (min if lowest else max)(pairs, key=lambda pair: pair[1])
    return {"value": value, "epoch": epoch}


def _last(pairs: list[list[float]]) -> float | None:
    return pairs[-1][1] if pairs else None


def summary(found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best: highest val accuracy, lowest val loss, each with its epoch; final values)."""
    loss, accuracy = found["loss"], found["accuracy"]
    best = {
        "val_accuracy": _best(accuracy["val"], lowest=False),
        "val_loss": _best(loss["val"], lowest=True),
    }
    every = [*loss["train"], *loss["val"], *accuracy["train"], *accuracy["val"]]
    final = {
        "epoch": max((epoch for epoch, _ in every), default=None),
        "loss": _last(loss["train"]),
        "accuracy": _last(accuracy["train"]),
        "val_loss": _last(loss["val"]),
        "val_accuracy": _last(accuracy["val"]),
        "learning_rate": _last(found["learning_rate"]),
    }
    return best, final


def options(job: Job) -> dict[str, Any]:
    """The job's form fields as the model page shows them (secrets removed), with its dataset."""
    return {**redacted(job.form), "dataset": job.depends_on[0] if job.depends_on else None}


def _same(values: list[Any]) -> bool:
    keys = {json.dumps(v, sort_keys=True, default=str) for v in values}
    return len(keys) == 1


def differing(jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """The options whose values differ between the jobs: name -> {job id: value (None: unset)}."""
    forms = [options(j) for j in jobs]
    names = sorted(set().union(*forms))
    return {
        name: {j.id: form.get(name) for j, form in zip(jobs, forms, strict=True)}
        for name in names
        if not _same([form.get(name) for form in forms])
    }


def compare(ids: Sequence[str]) -> dict[str, Any]:
    """The comparison of the chosen runs (``CompareError`` naming a bad id)."""
    jobs = find_runs(chosen_ids(ids))
    runs = []
    for job, points in zip(jobs, histories(jobs), strict=True):
        found = curves(points)
        best, final = summary(found)
        runs.append(
            {
                "job_id": job.id,
                "name": job.name,
                "owner": job.owner,
                "status": job.status_name,
                "dataset": job.depends_on[0] if job.depends_on else None,
                "points": len(points),
                "curves": found,
                "best": best,
                "final": final,
            }
        )
    return {"runs": runs, "differing_options": differing(jobs)}
