"""The embedded bus's users: passwords made once, kept private, and URLs that sign in."""

from __future__ import annotations

import json

import pytest

from digits import natsauth
from digits.config import ConfigError


def test_passwords_are_made_once_private_and_kept(tmp_path):
    first = natsauth.passwords(tmp_path)
    path = tmp_path / natsauth.USERS_FILE
    assert set(first) == set(natsauth.USERS) and len(set(first.values())) == len(first)
    assert all(len(p) == 48 for p in first.values())
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)  # restored from a backup with wider rights
    assert natsauth.passwords(tmp_path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    kept = json.loads(path.read_text())
    del kept["integrator"]  # a file from before a user was added gets the new one only
    path.write_text(json.dumps(kept))
    again = natsauth.passwords(tmp_path)
    assert {u: again[u] for u in kept} == kept and again["integrator"] != first["integrator"]
    env = natsauth.server_env(again)
    assert env["NATS_INTEGRATOR_PASSWORD"] == again["integrator"]


def test_a_user_url_signs_in_and_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="run `digits up` there first"):
        natsauth.user_url(tmp_path, "integrator")
    users = natsauth.passwords(tmp_path)
    natsauth.record_url(tmp_path, "nats://127.0.0.1:4333")
    assert natsauth.user_url(tmp_path, "integrator") == (
        f"nats://integrator:{users['integrator']}@127.0.0.1:4333"
    )
    with pytest.raises(ConfigError, match="'nobody' is not one of admin"):
        natsauth.user_url(tmp_path, "nobody")
    assert natsauth.signed_url("tls://h:1", "a b", "p@ss/") == "tls://a%20b:p%40ss%2F@h:1"
    assert natsauth.signed_url("nats://old:pw@[::1]", "u", "p") == "nats://u:p@[::1]"
    (tmp_path / natsauth.USERS_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="nats-users.json is not the JSON"):
        natsauth.user_url(tmp_path, "admin")


async def test_a_store_the_unlocked_bus_wrote_is_taken_over_by_the_locked_one(tmp_path):
    import nats

    from digits import cli
    from digits.natsserver import NatsServer

    store = tmp_path / "jetstream"
    unlocked = NatsServer(store).start()
    try:
        nc = await nats.connect(unlocked.url)
        kv = await nc.jetstream().create_key_value(bucket="digits-jobs")
        await kv.put("job-1", b"before the lock")
        await nc.close()
    finally:
        unlocked.stop()
    cli._adopt_anonymous_store(store)
    users = natsauth.passwords(tmp_path)
    locked = NatsServer(
        store, accounts=natsauth.ACCOUNTS_CONF, env=natsauth.server_env(users)
    ).start()
    try:
        nc = await nats.connect(natsauth.signed_url(locked.url, "admin", users["admin"]))
        kv = await nc.jetstream().key_value("digits-jobs")
        assert (await kv.get("job-1")).value == b"before the lock"
        await nc.close()
    finally:
        locked.stop()
