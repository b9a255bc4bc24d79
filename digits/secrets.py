"""Encrypted credential records: a form keeps a ``secret_ref``, the KV bucket only ciphertext."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken
from nats.js.errors import KeyNotFoundError

SECRET_FIELDS = frozenset(
    {
        "s3_secret_key",
        "s3_access_key",
        "s3_secretkey",
        "s3_accesskey",
        "secret_key",
        "access_key",
        "password",
        "token",
    }
)
REF_PREFIX = "secret:"
_REF = re.compile(r"^secret:([A-Za-z0-9_-]{1,128})$")


class SecretError(Exception):
    """A secret record cannot be found or decrypted."""


class SecretBox:
    """Fernet encryption of msgpack-encoded dicts, keyed by DIGITS_SECRET_KEY."""

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except Exception:
            raise ValueError(
                "the secret key is not valid: it must be a urlsafe base64-encoded 32-byte "
                "Fernet key (make one with `digits secret-key`)"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(key=***)"

    @staticmethod
    def generate_key() -> str:
        """A fresh random key, as text suitable for DIGITS_SECRET_KEY."""
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, record: Mapping[str, Any]) -> bytes:
        """Ciphertext of ``record`` (msgpack, then Fernet)."""
        return self._fernet.encrypt(msgspec.msgpack.encode(dict(record)))

    def decrypt(self, token: bytes) -> dict[str, Any]:
        """The record inside ``token``; SecretError if this key cannot open it."""
        try:
            plain = self._fernet.decrypt(token)
        except (InvalidToken, TypeError, ValueError):
            raise SecretError(
                "cannot decrypt secret record (invalid token or wrong key); "
                "was DIGITS_SECRET_KEY changed?"
            ) from None
        try:
            record = msgspec.msgpack.decode(plain)
        except msgspec.DecodeError:
            record = None
        if not isinstance(record, dict):
            raise SecretError("secret record does not hold a mapping")
        return record


def _kv_key(ref: str) -> str:
    match = _REF.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise SecretError(f"bad secret reference {ref!r}; expected 'secret:<id>'")
    return match.group(1)


class SecretStore:
    """Secret records in the ``digits-secrets`` KV bucket, encrypted with a SecretBox."""

    def __init__(self, kv: Any, box: SecretBox) -> None:
        self.kv, self.box = kv, box

    def __repr__(self) -> str:
        return f"SecretStore(bucket={getattr(self.kv, '_name', '?')!r})"

    async def put(self, record: Mapping[str, Any], ref: str | None = None) -> str:
        """Store ``record`` (under ``ref``, or a new one) and return its reference."""
        ref = ref or f"{REF_PREFIX}{uuid.uuid4().hex}"
        await self.kv.put(_kv_key(ref), self.box.encrypt(record))
        return ref

    async def get(self, ref: str) -> dict[str, Any]:
        """The record behind ``ref``; SecretError if there is none."""
        try:
            entry = await self.kv.get(_kv_key(ref))
        except KeyNotFoundError:
            raise SecretError(f"unknown secret reference {ref!r}") from None
        if not entry.value:
            raise SecretError(f"unknown secret reference {ref!r}")
        return self.box.decrypt(entry.value)

    async def delete(self, ref: str) -> None:
        """Forget the record behind ``ref`` (its ciphertext is purged)."""
        await self.kv.purge(_kv_key(ref))


OWNER = "__owner__"  # who sealed a record: only that owner's jobs may open it


async def seal_form(store: SecretStore, form: Mapping[str, Any], owner: str = "") -> dict[str, Any]:
    """A copy of ``form`` whose secret fields are moved into one record named by ``secret_ref``."""
    out = {k: v for k, v in form.items() if k not in SECRET_FIELDS}
    secrets = {k: v for k, v in form.items() if k in SECRET_FIELDS and v not in (None, "")}
    if secrets:
        out["secret_ref"] = await store.put({**secrets, OWNER: owner})
    return out


async def open_form(store: SecretStore, form: Mapping[str, Any], owner: str = "") -> dict[str, Any]:
    """The reverse of seal_form; a record sealed for another owner is refused."""
    out = dict(form)
    ref = out.pop("secret_ref", None)
    if ref:
        record = await store.get(ref)
        sealed_for = record.pop(OWNER, "")
        if sealed_for != owner:
            raise SecretError(f"secret reference {ref!r} belongs to another owner")
        out.update(record)
    return out


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with every non-empty secret field (at any depth) shown as ``***``."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return redact(value)
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return {
        k: "***" if k in SECRET_FIELDS and v not in (None, "") else clean(v)
        for k, v in mapping.items()
    }
