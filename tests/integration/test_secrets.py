"""Secret records in the digits-secrets KV bucket of a real nats-server."""

from __future__ import annotations

import nats
import pytest

from digits.secrets import (
    SECRET_FIELDS,
    SecretBox,
    SecretError,
    SecretStore,
    open_form,
    redact,
    seal_form,
)
from digits.subjects import KV_SECRETS


@pytest.fixture
async def kv(nc: nats.NATS):  # noqa: ANN201
    """The digits-secrets bucket on the test's nats-server."""
    return await nc.jetstream().create_key_value(bucket=KV_SECRETS, history=1)


@pytest.fixture
def box() -> SecretBox:
    """A box with a fresh key."""
    return SecretBox(SecretBox.generate_key())


async def test_round_trip_keeps_only_ciphertext(kv, box: SecretBox) -> None:  # noqa: ANN001
    store = SecretStore(kv, box)
    record = {"s3_access_key": "AKIAEXAMPLE", "s3_secret_key": "wJalrXUtnFEMI/K7MDENG", "n": 3}
    ref = await store.put(record)
    assert ref.startswith("secret:") and len(ref) == len("secret:") + 32
    assert await store.get(ref) == record
    (key,) = await kv.keys()
    assert key == ref.removeprefix("secret:")
    raw = (await kv.get(key)).value
    for text in ("AKIAEXAMPLE", "wJalrXUtnFEMI", "s3_secret_key"):
        assert text.encode() not in raw
    assert await store.put({"password": "p2"}, ref) == ref  # replace under the same ref
    assert await store.get(ref) == {"password": "p2"}
    await store.delete(ref)
    with pytest.raises(SecretError, match=ref):
        await store.get(ref)
    with pytest.raises(SecretError, match="secret:0123abcd"):
        await store.get("secret:0123abcd")
    with pytest.raises(SecretError, match="bad secret reference"):
        await store.get("not-a-ref")


async def test_wrong_key(kv, box: SecretBox) -> None:  # noqa: ANN001
    ref = await SecretStore(kv, box).put({"token": "tok-123"})
    other = SecretStore(kv, SecretBox(SecretBox.generate_key()))
    with pytest.raises(SecretError, match="DIGITS_SECRET_KEY changed") as info:
        await other.get(ref)
    assert "tok-123" not in str(info.value)


async def test_seal_and_open_form(kv, box: SecretBox) -> None:  # noqa: ANN001
    store = SecretStore(kv, box)
    form = {
        "name": "cats",
        "folder_train": "s3://bucket/train",
        "s3_access_key": "AKIA",
        "s3_secret_key": "shh",
        "password": "",
    }
    sealed = await seal_form(store, form)
    assert not SECRET_FIELDS & sealed.keys()
    assert sealed["name"] == "cats" and sealed["secret_ref"].startswith("secret:")
    assert "shh" not in repr(sealed)
    assert form["s3_secret_key"] == "shh"  # the input is untouched
    opened = await open_form(store, sealed)
    assert opened == {k: v for k, v in form.items() if k != "password"}
    plain = {"name": "x", "password": ""}
    assert await seal_form(store, plain) == {"name": "x"}
    assert await open_form(store, {"name": "x"}) == {"name": "x"}
    assert len(await kv.keys()) == 1


async def test_a_record_opens_only_for_the_owner_it_was_sealed_for(kv, box: SecretBox) -> None:  # noqa: ANN001
    store = SecretStore(kv, box)
    sealed = await seal_form(store, {"s3_secretkey": "shh"}, owner="alice")
    assert (await open_form(store, sealed, owner="alice"))["s3_secretkey"] == "shh"
    with pytest.raises(SecretError, match="belongs to another owner"):
        await open_form(store, sealed, owner="bob")


def test_redact() -> None:
    data = {
        "name": "n",
        "password": "pw",
        "token": "",
        "nested": {"s3_secret_key": "k", "ok": 1},
        "list": [{"access_key": "a"}, 2],
        "secret_ref": "secret:abc",
    }
    assert redact(data) == {
        "name": "n",
        "password": "***",
        "token": "",
        "nested": {"s3_secret_key": "***", "ok": 1},
        "list": [{"access_key": "***"}, 2],
        "secret_ref": "secret:abc",
    }
    assert data["password"] == "pw"


@pytest.mark.parametrize("key", ["", "short", "x" * 44, b"\x00" * 32])
def test_bad_box_key(key: str | bytes) -> None:
    with pytest.raises(ValueError, match="32-byte Fernet key.*digits secret-key") as info:
        SecretBox(key)
    if key:
        assert str(key) not in str(info.value)


def test_box_hides_key() -> None:
    key = SecretBox.generate_key()
    box = SecretBox(key)
    assert key not in repr(box) and "***" in repr(box)
    assert box.decrypt(box.encrypt({"a": [1, "b"]})) == {"a": [1, "b"]}
    with pytest.raises(SecretError):
        box.decrypt(b"garbage")
