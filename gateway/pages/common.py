"""What every page shares: session login, partial-or-page rendering, the bus and job store."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from gateway.accounts import User
from gateway.auth import accounts_of
from gateway.runtime import bus_client as bus_client  # re-exported for the pages
from gateway.runtime import job_store as job_store
from gateway.runtime import publish as publish

F = TypeVar("F", bound=Callable[..., Any])


def is_htmx() -> bool:
    """Whether htmx sent this request (it then gets the fragment, not the whole page)."""
    return request.headers.get("HX-Request") == "true"


def page(template: str, partial: str, **context: Any) -> str:
    """The whole page for a browser; the ``partial`` template alone for an htmx request."""
    return render_template(partial if is_htmx() else template, **context)


def safe_next(target: str | None) -> str:
    """A same-site path to go back to after login, else the home page."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/"):
            return target
    return url_for("home.index") if "home.index" in current_app.view_functions else "/"


def session_user() -> User | None:
    """The logged-in user of this session, if still a valid account."""
    username = session.get("user")
    if not isinstance(username, str):
        return None
    user = accounts_of().get(username)
    # A changed password ends the sessions started with the old one.
    if user is None or session.get("pw") != user.password_hash[-12:]:
        return None
    return user


def page_login_required(view: F) -> F:
    """Run the view only for a logged-in user (``g.user``); others go to the login page."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = session_user()
        if user is None:
            login = url_for("auth.login", next=request.full_path.rstrip("?"))
            if is_htmx():  # a partial cannot redirect the page by itself
                return "", 401, {"HX-Redirect": login}
            return redirect(login)
        g.user = user
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def may_change(owner: str) -> bool:
    """Whether the logged-in user may abort, delete or edit a job of ``owner``."""
    user: User = g.user
    return user.is_admin or user.username == owner


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
            if ext_id == "image-classification"
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
