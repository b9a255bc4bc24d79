"""Who may use a job: train on a dataset, fine-tune from or run a model, download it.

Pages and JSON that describe a job (status, redacted form, curves) are open to every signed-in
user, as in DIGITS. Using one's contents is its owner's or an admin's, unless the operator
shares every job (``DIGITS_SHARE_JOBS=1``, DIGITS's own behaviour).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import abort, current_app, g


def usable() -> Callable[[str], bool]:
    """For the signed-in user: whether a job of a given owner is theirs to use (any thread)."""
    user = g.user
    if user.is_admin or getattr(current_app.config.get("SETTINGS"), "share_jobs", False):
        return lambda owner: True
    return lambda owner: owner == user.username


def may_use(owner: str) -> bool:
    """Whether the signed-in user may use a job of ``owner``."""
    return usable()(owner)


def may_change(owner: str) -> bool:
    """Whether the signed-in user may abort, delete or edit a job of ``owner`` (never shared)."""
    user = g.user
    return bool(user.is_admin or user.username == owner)


def refusal(job: Any, what: str) -> str | None:
    """Why the signed-in user may not ``what`` (e.g. "train on") ``job``, or None if they may."""
    if may_use(job.owner):
        return None
    return (
        f"{job.type} {job.name!r} ({job.id}) belongs to {job.owner or 'nobody'}: only its owner"
        f" or an admin may {what} it"
    )


def require_use(job: Any, what: str) -> None:
    """A 403 naming the job unless the signed-in user may ``what`` it."""
    reason = refusal(job, what)
    if reason:
        abort(403, description=reason)
