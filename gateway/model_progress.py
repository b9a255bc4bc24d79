"""A model's training progress as the trainer published it: TrainProgress events on DIGITS_EVT.

The stream is the history: each job's progress events have their own subject, so the page asks
for the ones after the last stream sequence it has and appends them to its graphs.
"""

from __future__ import annotations

import math
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from digits import events, subjects
from digits.models.lr_policies import learning_rate, policy_from_form

MAX_POINTS = 5000  # per answer; the page asks again for the rest


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def point(seq: int, event: events.TrainProgress) -> dict[str, Any]:
    """One graph point: the event's epoch, phase, metrics and learning rate, JSON-safe."""
    return {
        "seq": seq,
        "epoch": event.epoch,
        "phase": event.phase,
        "metrics": {k: _finite(v) for k, v in event.metrics.items()},
        "learning_rate": _finite(event.learning_rate),
        "at": event.occurred_at,
    }


async def read(
    js: JetStreamContext, job_id: str, after: int = 0, limit: int = MAX_POINTS
) -> tuple[list[dict[str, Any]], int, bool]:
    """(points after stream sequence ``after``, the last sequence read, whether more remain)."""
    subject = subjects.evt_job(job_id, "train.progress")
    try:
        last = await js.get_last_msg(subjects.STREAM_EVT, subject)
    except nats.js.errors.NotFoundError:
        return [], after, False
    if last.seq is None or last.seq <= after:
        return [], after, False
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    sub = await js.subscribe(subject, ordered_consumer=True, config=config)
    points: list[dict[str, Any]] = []
    seq = after
    try:
        while seq < last.seq and len(points) < limit:
            try:
                msg = await sub.next_msg(timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # expired by the stream's max age meanwhile: answer what arrived
            seq = msg.metadata.sequence.stream
            try:
                points.append(point(seq, events.decode(msg.data, events.TrainProgress)))
            except ValueError:
                continue  # not a progress event: skip it, the sequence still moves on
    finally:
        await sub.unsubscribe()
    return points, seq, seq < last.seq


async def read_all(
    js: JetStreamContext, job_id: str, page: int | None = None
) -> list[dict[str, Any]]:
    """Every progress point of the job still on the stream, oldest first (``read`` until done)."""
    points: list[dict[str, Any]] = []
    seq, more = 0, True
    while more:
        found, after, more = await read(js, job_id, seq, page or MAX_POINTS)
        if after <= seq:
            break  # nothing moved on (expired meanwhile): what arrived is the history
        points.extend(found)
        seq = after
    return points


def lr_curve(form: dict[str, Any], steps: int = 100) -> list[tuple[float, float]]:
    """DIGITS's learning-rate preview: (percent of training, rate) for the form's policy."""
    fields = dict(form)
    if isinstance(fields.get("learning_rate"), str):
        fields["learning_rate"] = fields["learning_rate"].split(",")[0].strip()
    policy, base_lr, params = policy_from_form(fields)
    return [
        (100.0 * i / steps, learning_rate(policy, base_lr, i / steps, **params))
        for i in range(steps + 1)
    ]


def svg_points(curve: list[tuple[float, float]], width: int, height: int) -> tuple[str, float]:
    """An SVG polyline's points for ``curve`` (x 0..100 %, y 0..max rate); the max rate."""
    top = max((lr for _, lr in curve), default=0.0) or 1.0
    coords = (f"{x / 100 * width:.1f},{height - lr / top * height:.1f}" for x, lr in curve)
    return " ".join(coords), top


async def last(js: JetStreamContext, job_id: str) -> events.TrainProgress | None:
    """The job's latest training-phase progress event, if any."""
    subject = subjects.evt_job(job_id, "train.progress")
    try:
        msg = await js.get_last_msg(subjects.STREAM_EVT, subject)
    except nats.js.errors.NotFoundError:
        return None
    try:
        return events.decode(msg.data, events.TrainProgress)
    except ValueError:
        return None
