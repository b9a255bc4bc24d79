"""Accounts and authentication: Basic, Bearer tokens, the login rate limit, admin bootstrap."""

from __future__ import annotations

import logging
import stat

import pytest

from gateway.context import accounts_of, bus_of
from tests.gateway.conftest import ADMIN, ADMIN_PASSWORD, basic, bearer, make_app


def test_json_routes_require_authentication(client):
    for method, path in [
        ("get", "/index.json"),
        ("post", "/datasets/images/classification.json"),
        ("get", "/models/x.json"),
        ("delete", "/jobs/x"),
        ("post", "/models/images/classification/classify_one.json"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert "error" in response.get_json()


def test_basic_auth_lists_datasets_and_models(client):
    response = client.get("/index.json", headers=ADMIN)
    assert response.status_code == 200
    found = response.get_json()
    assert (found["datasets"], found["models"], found["next"]) == ([], [], None)


def test_wrong_password_and_unknown_user_are_refused(client):
    assert client.get("/index.json", headers=basic("admin", "nope")).status_code == 401
    assert client.get("/index.json", headers=basic("ghost", "x")).status_code == 401
    assert client.get("/index.json", headers={"Authorization": "Digest x"}).status_code == 401


def test_tokens_work_until_revoked(client):
    created = client.post("/api/v1/tokens", json={"name": "ci"}, headers=ADMIN)
    assert created.status_code == 201
    token, token_id = created.get_json()["token"], created.get_json()["id"]
    assert client.get("/index.json", headers=bearer(token)).status_code == 200
    assert client.get("/index.json", headers=bearer(token + "x")).status_code == 401
    user = accounts_of(client.application).get("admin")
    assert user is not None and token not in str(user), "only a digest is stored"
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=bearer(token)).status_code == 200
    assert client.get("/index.json", headers=bearer(token)).status_code == 401
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=ADMIN).status_code == 404


def test_failed_logins_are_rate_limited_per_user_and_address(client):
    wrong = basic("admin", "wrong")
    for _ in range(5):
        assert client.get("/index.json", headers=wrong).status_code == 401
    limited = client.get("/index.json", headers=ADMIN)
    assert limited.status_code == 429, "even the right password waits out the minute"
    assert int(limited.headers["Retry-After"]) >= 1
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert client.get("/index.json", headers=ADMIN, environ_base=other).status_code == 200


def test_admin_creates_users_and_others_cannot(client):
    made = client.post(
        "/api/v1/users", json={"username": "alice", "password": "pw-a"}, headers=ADMIN
    )
    assert made.status_code == 201 and made.get_json() == {"username": "alice", "is_admin": False}
    alice = basic("alice", "pw-a")
    assert client.get("/index.json", headers=alice).status_code == 200
    again = client.post("/api/v1/users", json={"username": "bob", "password": "x"}, headers=alice)
    assert again.status_code == 403
    taken = client.post("/api/v1/users", json={"username": "alice", "password": "x"}, headers=ADMIN)
    assert taken.status_code == 400 and "already exists" in taken.get_json()["error"]
    bad = client.post("/api/v1/users", json={"username": "a b", "password": "x"}, headers=ADMIN)
    assert bad.status_code == 400 and "username" in bad.get_json()["error"]


def test_generated_admin_password_is_written_once(nats_server, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DIGITS_ADMIN_PASSWORD", raising=False)
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="gateway.accounts"):
        first = make_app(nats_server, data_dir)
    try:
        path = data_dir / "admin-password.txt"
        password = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"admin password written to {path}" in caplog.text
        assert password not in caplog.text
        client = first.test_client()
        assert client.get("/index.json", headers=basic("admin", password)).status_code == 200
    finally:
        bus_of(first).close()
    path.unlink()
    second = make_app(nats_server, data_dir)
    try:
        assert not path.exists(), "admin exists already: no new password"
        client = second.test_client()
        assert client.get("/index.json", headers=basic("admin", password)).status_code == 200
    finally:
        bus_of(second).close()


def test_admin_password_from_the_environment_replaces_the_old_one(nats_server, tmp_path):
    first = make_app(nats_server, tmp_path, ADMIN_PASSWORD="old-pw")
    bus_of(first).close()
    second = make_app(nats_server, tmp_path, ADMIN_PASSWORD=ADMIN_PASSWORD)
    try:
        client = second.test_client()
        assert client.get("/index.json", headers=ADMIN).status_code == 200
        assert client.get("/index.json", headers=basic("admin", "old-pw")).status_code == 401
    finally:
        bus_of(second).close()


def test_csrf_protects_cookie_routes_but_not_the_json_api(app, client):
    app.add_url_rule("/probe", "probe", lambda: "ok", methods=["POST"])
    assert client.post("/probe").status_code == 400, "a form route without a CSRF token"
    response = client.post("/datasets/images/classification.json", headers=ADMIN)
    assert response.status_code == 400 and "errors" in response.get_json()


@pytest.mark.parametrize("secret", ["", "a-key"])
def test_secret_key_is_set(nats_server, tmp_path, secret):
    from digits.config import Settings
    from gateway.app import create_app

    env = {"DIGITS_NATS_URL": nats_server.url, "DIGITS_DATA_DIR": str(tmp_path)}
    if secret:
        env["DIGITS_SECRET_KEY"] = secret
    app = create_app({"SETTINGS": Settings.from_env(env), "START_BUS": False})
    assert app.config["SECRET_KEY"] and app.config["SECRET_KEY"] != secret
