"""Who is calling: a page session, or HTTP Basic / Bearer for the JSON routes (rate-limited).

One decorator per meaning: ``api_login_required`` (Basic or Bearer; a 401 JSON answer otherwise),
``page_login_required`` (a session cookie; others go to the login page) and
``page_or_api_login_required`` (either: a link on a page that scripts call too, as the download).
Each makes the caller ``g.user``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, jsonify, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from gateway.accounts import User
from gateway.context import accounts_of, limiter_of
from gateway.runtime import is_htmx

F = TypeVar("F", bound=Callable[..., Any])
REALM = 'Basic realm="DIGITS", charset="UTF-8"'


def _unauthorized(message: str) -> ResponseReturnValue:
    response = jsonify({"error": message})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = REALM
    return response


def _too_many(wait_s: float) -> ResponseReturnValue:
    response = jsonify({"error": "too many failed logins; try again later"})
    response.status_code = 429
    response.headers["Retry-After"] = str(max(math.ceil(wait_s), 1))
    return response


def authenticate() -> User | ResponseReturnValue:
    """The request's user, or the 401/429 response to send instead."""
    auth = request.authorization
    if auth is None:
        return _unauthorized("authentication required: HTTP Basic or 'Authorization: Bearer'")
    accounts = accounts_of()
    if auth.type == "bearer":
        user = accounts.verify_token(auth.token or "")
        return user if user is not None else _unauthorized("invalid or revoked token")
    if auth.type != "basic":
        return _unauthorized(f"unsupported authorization scheme {auth.type!r}")
    username, password = auth.username or "", auth.password or ""
    remote = request.remote_addr or "-"
    limiter = limiter_of()
    wait = limiter.blocked(username, remote)
    if wait:
        return _too_many(wait)
    user = accounts.verify_password(username, password)
    if user is None:
        limiter.failed(username, remote)
        return _unauthorized("wrong username or password")
    return user


SESSION_CHECK_S = 1.0  # a session's account is read again at most this often (per gateway)


def session_user() -> User | None:
    """The logged-in user of this session, if still a valid account."""
    username = session.get("user")
    if not isinstance(username, str):
        return None
    user = accounts_of().get(username, max_age=SESSION_CHECK_S)
    # A changed password ends the sessions started with the old one.
    if user is None or session.get("pw") != user.password_hash[-12:]:
        return None
    return user


def api_login_required(view: F) -> F:
    """Run the view only for a caller with HTTP Basic or a Bearer token (then ``g.user``)."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        found = authenticate()
        if not isinstance(found, User):
            return found
        g.user = found
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


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


def page_or_api_login_required(view: F) -> F:
    """A page session (a link) or HTTP Basic/Bearer (scripts) may call the view."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = session_user()
        if user is None:
            found = authenticate()
            if not isinstance(found, User):
                return found
            user = found
        g.user = user
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def current_user() -> User:
    """The authenticated user of this request."""
    return g.user
