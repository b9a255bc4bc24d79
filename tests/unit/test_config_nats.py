"""NATS users, passwords and credentials files from DIGITS_* variables."""

from __future__ import annotations

import importlib.util

import pytest

from digits import bus
from digits.config import ConfigError, Settings


def test_user_and_password_are_read_passed_on_and_never_printed():
    env = {"DIGITS_NATS_USER": "ingest", "DIGITS_NATS_PASSWORD": "s3cr3t-value"}
    env["DIGITS_NATS_URL"] = "nats://a:4222, tls://b:4222,nats://c:4222"
    settings = Settings.from_env(env)
    assert settings.nats_urls == ("nats://a:4222", "tls://b:4222", "nats://c:4222")
    assert (settings.nats_user, settings.nats_password) == ("ingest", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)
    child = settings.to_env()
    assert child["DIGITS_NATS_USER"] == "ingest" and child["DIGITS_NATS_PASSWORD"] == "s3cr3t-value"
    assert Settings.from_env(child).nats_password == "s3cr3t-value"


def test_a_password_without_a_user_is_refused():
    with pytest.raises(ConfigError, match="DIGITS_NATS_USER"):
        Settings.from_env({"DIGITS_NATS_PASSWORD": "x"})


@pytest.mark.skipif(
    importlib.util.find_spec("nkeys") is not None, reason="nkeys is installed: nothing to say"
)
async def test_a_credentials_file_needs_nkeys_and_says_so(tmp_path):
    creds = tmp_path / "ingest.creds"
    creds.write_text("not used")
    settings = Settings.from_env({"DIGITS_NATS_CREDS": str(creds)})
    with pytest.raises(ConfigError, match="nkeys"):
        await bus.connect(settings, "test")
