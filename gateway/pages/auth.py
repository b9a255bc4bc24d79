"""Login and logout pages (session cookie; the JSON API uses Basic or Bearer instead)."""

from __future__ import annotations

import math

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from gateway.auth import session_user
from gateway.context import accounts_of, limiter_of
from gateway.pages.common import safe_next

bp = Blueprint("auth", __name__)


@bp.get("/login")
def login() -> ResponseReturnValue:
    """The login form (straight on if already logged in)."""
    if session_user() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("auth/login.html", next=request.args.get("next", ""), error=None)


@bp.post("/login")
def login_post() -> ResponseReturnValue:
    """Check the password (rate-limited) and start a session."""
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    target = request.form.get("next", "")
    limiter = limiter_of()
    remote = request.remote_addr or "-"
    wait = limiter.blocked(username, remote)
    if wait:
        error = f"Too many failed logins; try again in {max(math.ceil(wait), 1)} s."
        html = render_template("auth/login.html", next=target, error=error, username=username)
        return html, 429
    user = accounts_of().verify_password(username, password)
    if user is None:
        limiter.failed(username, remote)
        html = render_template(
            "auth/login.html", next=target, error="Wrong username or password.", username=username
        )
        return html, 401
    csrf = session.get("csrf_token")  # the form tokens already rendered stay valid
    session.clear()
    if csrf:
        session["csrf_token"] = csrf
    session.permanent = True
    session["user"] = user.username
    session["pw"] = user.password_hash[-12:]
    return redirect(safe_next(target))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session."""
    session.clear()
    return redirect(url_for("auth.login"))
