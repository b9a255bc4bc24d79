"""What the JSON API and the pages share: publishing, sealing credentials, JSON errors, htmx."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from digits import bus, events, subjects
from digits.secrets import SECRET_FIELDS, SecretBox, SecretStore, seal_form
from gateway.context import bus_client
from gateway.forms import FormErrors


def is_htmx() -> bool:
    """Whether htmx sent this request (it then gets the fragment, not the whole page)."""
    return request.headers.get("HX-Request") == "true"


BOOT = secrets.token_hex(4)  # in every ETag: another process (or a restart) never matches


def conditional(parts: tuple[Any, ...], render: Callable[[], ResponseReturnValue]) -> Response:
    """``render()``'s response with an ETag made of ``parts``, or 304 if the client has it.

    ``parts`` name everything the response shows (a job's revision, its events heard, the
    user); a request whose If-None-Match holds the same tag gets 304 Not Modified without
    rendering. A malformed If-None-Match matches nothing, so it gets the whole response.
    """
    digest = hashlib.blake2b(repr((BOOT, *parts)).encode(), digest_size=9).hexdigest()
    headers = {"ETag": f'"{digest}"', "Cache-Control": "private, no-cache"}
    if request.if_none_match.contains_weak(digest):
        return Response(status=304, headers=headers)
    response = make_response(render())
    if response.status_code == 200:
        response.headers.update(headers)
    return response


def publish(event: events.Event) -> None:
    """Publish a command or fact on the bus (waits for the stream's ack)."""
    client = bus_client()
    assert client.nc is not None
    client.call(bus.publish_event(client.nc.jetstream(), event), timeout=15)


def sealed(form: dict[str, Any], owner: str) -> dict[str, Any]:
    """The form with its credentials moved into the secret store: commands carry a reference."""
    if not any(form.get(k) for k in SECRET_FIELDS):
        return form
    key = current_app.config["SETTINGS"].secret_key
    if not key:
        message = "the gateway has no DIGITS_SECRET_KEY, so credentials cannot be stored"
        raise FormErrors({k: [message] for k in SECRET_FIELDS if form.get(k)})
    client = bus_client()
    assert client.nc is not None

    async def seal() -> dict[str, Any]:
        kv = await client.nc.jetstream().key_value(subjects.KV_SECRETS)
        return await seal_form(SecretStore(kv, SecretBox(key)), form, owner=owner)

    return client.call(seal(), timeout=15)


def json_http_error(exc: HTTPException) -> ResponseReturnValue:
    """An HTTP error as JSON, with its code."""
    return jsonify({"error": exc.description or exc.name}), exc.code or 500


def json_form_errors(exc: FormErrors) -> ResponseReturnValue:
    """Invalid form fields: 400 with the messages per field."""
    return jsonify({"errors": exc.errors}), 400


def json_errors(bp: Blueprint) -> None:
    """Make a JSON blueprint answer HTTP errors and form errors as JSON."""
    bp.register_error_handler(HTTPException, json_http_error)
    bp.register_error_handler(FormErrors, json_form_errors)
