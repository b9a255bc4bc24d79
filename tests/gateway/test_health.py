"""The gateway's probe endpoint: its own NATS connection, not the whole stack."""

from __future__ import annotations

from gateway.context import bus_of


def test_healthz_answers_while_connected_without_login(client, app):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "nats": {"connected": True}}
    bus_of(app).close()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["nats"]["connected"] is False


def test_stack_health_reports_missing_services(client):
    response = client.get("/healthz.json")
    assert response.status_code == 503  # no ingest, train or view service runs in this test
    assert response.get_json()["nats"]["connected"] is True
