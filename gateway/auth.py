"""HTTP Basic and Bearer-token authentication for the JSON routes, with a login rate limit."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from gateway.accounts import Accounts, LoginLimiter, User

F = TypeVar("F", bound=Callable[..., Any])
REALM = 'Basic realm="DIGITS", charset="UTF-8"'


def accounts_of(app: Any = None) -> Accounts:
    """The app's user accounts."""
    found = (app or current_app).extensions.get("digits_accounts")
    if found is None:
        raise RuntimeError("the gateway has no user accounts (START_BUS was off)")
    return found


def limiter_of(app: Any = None) -> LoginLimiter:
    """The app's failed-login limiter."""
    return (app or current_app).extensions["digits_login_limiter"]


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


def login_required(view: F) -> F:
    """Run the view only for an authenticated user, who is then ``g.user``."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        found = authenticate()
        if not isinstance(found, User):
            return found
        g.user = found
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def current_user() -> User:
    """The authenticated user of this request."""
    return g.user
