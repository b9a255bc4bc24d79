"""What the page modules share: partial-or-page rendering, ownership, menus, inference forms.

Page modules (one blueprint each) never import each other; what two of them need is here, in
``jobdata`` (job records and dataset files) or in a helper module named for what it holds
(``dataset_forms``, ``dataset_view``, ``generic_forms``). Login is ``gateway.auth``'s, the bus and
the job store ``gateway.context``'s.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import urlsplit

from flask import abort, current_app, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from digits import events
from digits.jobs import Job
from gateway.inference import ask_view
from gateway.ownership import may_change
from gateway.runtime import is_htmx


def page(template: str, partial: str, **context: Any) -> str:
    """The whole page for a browser; the ``partial`` template alone for an htmx request."""
    return render_template(partial if is_htmx() else template, **context)


class Fragments:
    """Rendered HTML by key, the most recent ``size`` kept: a part of a page that many users see
    alike, keyed by the revision of what it shows, is rendered once per change."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.rendered = 0  # renders, for tests
        self._html: OrderedDict[Hashable, Markup] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, render: Callable[[], str]) -> Markup:
        """The HTML for ``key``, rendered by ``render`` when not held."""
        with self._lock:
            html = self._html.get(key)
            if html is not None:
                self._html.move_to_end(key)
                return html
        html = Markup(render())  # noqa: S704 - a template's own output
        with self._lock:
            self.rendered += 1
            self._html[key] = html
            while len(self._html) > self.size:
                self._html.popitem(last=False)
        return html


def fragments(name: str, size: int = 64) -> Fragments:
    """This app's fragment cache called ``name`` (revisions are per bus, so caches per app)."""
    held = current_app.extensions.setdefault("digits.fragments", {})
    found = held.get(name)
    if found is None:
        found = held.setdefault(name, Fragments(size))
    return found


def safe_next(target: str | None) -> str:
    """A same-site path to go back to after login, else the home page."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/"):
            return target
    return url_for("home.index") if "home.index" in current_app.view_functions else "/"


def forbid_unless_owner(owner: str) -> ResponseReturnValue | None:
    """A 403 unless the logged-in user owns the job or is an admin."""
    if not may_change(owner):
        abort(403, description="only the job's owner or an admin may change it")
    return None


def dataset_menu() -> list[tuple[str, list[tuple[str, str]]]]:
    """The "New Dataset" menu: (category, [(title, url)]) from the installed data extensions."""
    from digits.extensions.data import get_extensions

    menu: dict[str, list[tuple[str, str]]] = {}
    for ext_id, cls in get_extensions().items():
        if not cls.get_default_visibility():
            continue
        url = (
            "/datasets/images/classification/new"
            if ext_id == events.CLASSIFICATION
            else f"/datasets/generic/new/{ext_id}"
        )
        menu.setdefault(cls.get_category(), []).append((cls.get_title(), url))
    return sorted((cat, sorted(items)) for cat, items in menu.items())


def model_menu() -> list[tuple[str, list[tuple[str, str]]]]:
    """The "New Model" menu."""
    return [
        (
            "Images",
            [
                ("Classification", "/models/images/classification/new"),
                ("Other (generic)", "/models/images/generic/new"),
            ],
        )
    ]


class InferError(Exception):
    """What to show instead of a result, with the HTTP status."""

    def __init__(self, message: str, status: int = 400, field: str = "") -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


def form_epoch() -> float:
    """The posted ``snapshot_epoch`` (-1, the latest, when empty)."""
    text = request.form.get("snapshot_epoch", "").strip()
    if not text:
        return -1.0
    try:
        return float(text)
    except ValueError:
        raise InferError(
            f"snapshot_epoch {text!r} is not a number", field="snapshot_epoch"
        ) from None


def ask_or_fail(subject: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The view service's reply; its refusal (or its absence) as an InferError."""
    try:
        return ask_view(subject, payload, timeout)
    except HTTPException as exc:
        raise InferError(str(exc.description or exc.name), exc.code or 500) from None


def infer_result(job: Job, partial: str, **context: Any) -> ResponseReturnValue:
    """An inference form's result: the ``partial`` for htmx, inside the model's page otherwise."""
    return page("models/infer.html", partial, job=job, result=partial, **context)


def infer_failed(job: Job, partial: str, exc: InferError) -> ResponseReturnValue:
    """The form's result partial with the error in place of a result, and its HTTP status."""
    return infer_result(job, partial, error=exc.message, field=exc.field), exc.status
