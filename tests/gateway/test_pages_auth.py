"""Login and logout pages: session cookie, CSRF, rate limit, redirects."""

from __future__ import annotations

from tests.gateway.conftest import ADMIN_PASSWORD, Browser, csrf_of


def test_login_page_has_a_form_with_csrf(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'name="username"' in html and 'type="password"' in html
    assert csrf_of(html)
    assert "htmx-2.0.11.min.js" in html


def test_login_without_csrf_is_refused(client):
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 400
    assert "session" not in response.headers.get("Set-Cookie", "")


def test_wrong_password_rerenders_with_error(client):
    response = Browser(client).login(password="wrong")
    assert response.status_code == 401
    assert "Wrong username or password" in response.get_data(as_text=True)


def test_login_redirects_to_next_and_logout_ends_session(client):
    b = Browser(client)
    b.csrf = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "next": "/datasets/x",
            "csrf_token": b.csrf,
        },
    )
    assert response.status_code == 302 and response.headers["Location"] == "/datasets/x"
    assert client.get("/login").status_code == 302  # already logged in
    assert b.post("/logout").status_code == 302
    assert client.get("/login").status_code == 200


def test_next_cannot_leave_the_site(client):
    b = Browser(client)
    b.csrf = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login",
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "next": "//evil.example/x",
            "csrf_token": b.csrf,
        },
    )
    assert response.status_code == 302
    assert "evil.example" not in response.headers["Location"]


def test_login_is_rate_limited(client):
    b = Browser(client)
    codes = [b.login(password="nope").status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    assert b.login().status_code == 429  # even the right password waits


def test_changed_password_ends_old_sessions(client, accounts):
    b = Browser(client)
    assert b.login().status_code == 302
    assert client.get("/login").status_code == 302
    accounts.set_password("admin", "another-password-2")
    assert client.get("/login").status_code == 200
