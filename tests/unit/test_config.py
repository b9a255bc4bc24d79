"""Settings.from_env: defaults, parsing, and errors that name the bad value."""

from __future__ import annotations

import os
import re

import pytest

from digits.config import ConfigError, Settings


def test_defaults_put_everything_under_the_data_dir(tmp_path):
    settings = Settings.from_env({"DIGITS_DATA_DIR": str(tmp_path)})
    assert settings.nats_urls == ("nats://127.0.0.1:4222",)
    assert settings.store_url == (tmp_path / "store").as_uri()
    assert settings.replicas == 1 and settings.max_deliver == 5


def test_a_list_of_nats_servers_and_an_s3_store():
    env = {
        "DIGITS_NATS_URL": "nats://a:4222, nats://b:4222,tls://c:4222",
        "DIGITS_STORE_URL": "s3://artifacts/digits",
        "DIGITS_S3_ENDPOINT_URL": "http://minio:9000",
        "DIGITS_DATA_ROOTS": os.pathsep.join(["/data", "/srv/images"]),
        "DIGITS_REPLICAS": "3",
    }
    settings = Settings.from_env(env)
    assert settings.nats_urls == ("nats://a:4222", "nats://b:4222", "tls://c:4222")
    assert settings.store_url == "s3://artifacts/digits"
    assert settings.data_roots == ("/data", "/srv/images")
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DIGITS_NATS_URL", "http://x:4222", "'http://x:4222' is not a NATS URL"),
        ("DIGITS_REPLICAS", "three", "DIGITS_REPLICAS='three' is not an integer"),
        ("DIGITS_REPLICAS", "9", "DIGITS_REPLICAS='9' is out of range; expected 1..5"),
        ("DIGITS_ACK_WAIT_S", "-1", "DIGITS_ACK_WAIT_S='-1' is out of range"),
        ("DIGITS_STORE_URL", "ftp://x", "DIGITS_STORE_URL='ftp://x' is not supported"),
        ("DIGITS_NATS_CREDS", "/no/such.creds", "DIGITS_NATS_CREDS='/no/such.creds': no such"),
        ("DIGITS_LOG_LEVEL", "LOUD", "DIGITS_LOG_LEVEL='LOUD' is not one of"),
        ("DIGITS_ALLOW_PYTHON_NETWORKS", "maybe", "'maybe' is not a boolean"),
        ("DIGITS_SNS_ORIGIN", "http://(127", "DIGITS_SNS_ORIGIN='http://(127' is not a regular"),
        ("DIGITS_SNS_CONFIRM", "later", "DIGITS_SNS_CONFIRM='later' is not a boolean"),
        ("DIGITS_FOLLOW_MIN_NEW_SAMPLES", "-3", "DIGITS_FOLLOW_MIN_NEW_SAMPLES='-3' is out of"),
        ("DIGITS_FOLLOW_MIN_INTERVAL_S", "soon", "DIGITS_FOLLOW_MIN_INTERVAL_S='soon' is not a"),
        ("DIGITS_TRAIN_NICE", "20", "DIGITS_TRAIN_NICE='20' is out of range; expected 0..19"),
        ("DIGITS_TRAIN_NICE", "-5", "DIGITS_TRAIN_NICE='-5' is out of range; expected 0..19"),
    ],
)
def test_bad_values_are_named(var, value, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert message in str(info.value)


def test_sns_settings_default_to_aws_and_travel_to_child_processes():
    assert Settings.from_env({}).sns_origin is None and Settings.from_env({}).sns_confirm
    env = {"DIGITS_SNS_ORIGIN": r"http://127\.0\.0\.1:\d+", "DIGITS_SNS_CONFIRM": "off"}
    settings = Settings.from_env(env)
    assert settings.sns_origin == r"http://127\.0\.0\.1:\d+" and not settings.sns_confirm
    assert Settings.from_env(settings.to_env()) == settings


def test_the_secret_key_never_shows_in_repr():
    settings = Settings.from_env({"DIGITS_SECRET_KEY": "s3cr3t-key-material"})
    assert "s3cr3t" not in repr(settings)


def test_the_upload_ttl_and_sweep_period():
    assert (Settings().upload_ttl_s, Settings().upload_sweep_s) == (86400.0, 3600.0)
    env = {"DIGITS_UPLOAD_TTL_S": "7200", "DIGITS_UPLOAD_SWEEP_S": "0"}
    settings = Settings.from_env(env)
    assert (settings.upload_ttl_s, settings.upload_sweep_s) == (7200.0, 0.0)
    assert Settings.from_env(settings.to_env()) == settings
    bad = {
        "DIGITS_UPLOAD_TTL_S": ("10", "DIGITS_UPLOAD_TTL_S='10' is out of range; expected 60.0"),
        "DIGITS_UPLOAD_SWEEP_S": ("0.5", "DIGITS_UPLOAD_SWEEP_S='0.5': expected 0 (off) or 1"),
    }
    for var, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            Settings.from_env({var: value})


def test_follower_bounds_default_and_travel_to_child_processes():
    assert Settings.from_env({}).follow_min_new_samples == 1
    env = {"DIGITS_FOLLOW_MIN_NEW_SAMPLES": "250", "DIGITS_FOLLOW_MIN_INTERVAL_S": "600"}
    settings = Settings.from_env(env)
    assert (settings.follow_min_new_samples, settings.follow_min_interval_s) == (250, 600.0)
    assert Settings.from_env(settings.to_env()) == settings


def test_the_train_priority_defaults_to_the_lowest_and_travels_to_child_processes():
    assert Settings.from_env({}).train_nice == 19
    settings = Settings.from_env({"DIGITS_TRAIN_NICE": "0"})
    assert settings.train_nice == 0
    assert Settings.from_env(settings.to_env()) == settings
