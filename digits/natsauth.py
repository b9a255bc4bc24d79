"""The embedded bus's users: a password per user, made once per data dir, and their accounts.

`digits up` starts nats-server with ``nats_accounts.conf`` (the same accounts, users and
per-service permissions as ``deploy/nats/accounts.conf``; a test keeps the two equal), each
password handed to the server as its ``NATS_<USER>_PASSWORD`` variable and to each service as
``DIGITS_NATS_USER``/``DIGITS_NATS_PASSWORD``. An anonymous client is refused. The passwords
live in ``<data dir>/nats-users.json`` (mode 0600); ``digits nats-user NAME`` prints a URL that
signs in as one of them (``integrator`` for outside systems).
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.parse
from pathlib import Path

from digits.config import ConfigError

ACCOUNTS_CONF = Path(__file__).with_name("nats_accounts.conf")
USERS = ("admin", "gateway", "ingest", "train", "view", "minio", "integrator", "sys")
USERS_FILE = "nats-users.json"
URL_FILE = "nats-url"


def password_var(user: str) -> str:
    """The server's environment variable that holds ``user``'s password."""
    return f"NATS_{user.upper()}_PASSWORD"


def passwords(data_dir: Path) -> dict[str, str]:
    """Every user's password: read from the data dir, made (and written 0600) where missing."""
    path = data_dir / USERS_FILE
    found = _read(path) if path.exists() else {}
    missing = [user for user in USERS if not found.get(user)]
    if missing:
        found.update({user: secrets.token_hex(24) for user in missing})
        _write_private(path, json.dumps(found, indent=1, sort_keys=True) + "\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a copy restored with wider rights is narrowed again
    return {user: found[user] for user in USERS}


def server_env(passwords_: dict[str, str]) -> dict[str, str]:
    """The NATS_*_PASSWORD variables nats-server reads the accounts' passwords from."""
    return {password_var(user): password for user, password in passwords_.items()}


def signed_url(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` in it, as NATS clients accept."""
    parts = urllib.parse.urlsplit(url)
    auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    where = parts.netloc.rsplit("@", 1)[-1]  # host[:port] as written (IPv6 brackets kept)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}@{where}"))


def user_url(data_dir: Path, user: str) -> str:
    """The URL that signs in to the data dir's embedded bus as ``user`` (after `digits up`)."""
    if user not in USERS:
        raise ConfigError(f"NATS user {user!r} is not one of {', '.join(USERS)}")
    users, where = data_dir / USERS_FILE, data_dir / URL_FILE
    if not users.exists() or not where.exists():
        raise ConfigError(f"{data_dir} has no embedded bus yet: run `digits up` there first")
    return signed_url(where.read_text().strip(), user, _read(users)[user])


def record_url(data_dir: Path, url: str) -> None:
    """Note where the data dir's embedded bus listens (for `digits nats-user`)."""
    (data_dir / URL_FILE).write_text(url + "\n")


def _read(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not the JSON `digits up` writes: {exc}") from None
    if not isinstance(found, dict):
        raise ConfigError(f"{path} is not the JSON `digits up` writes: not an object")
    return found


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600 from the start), replacing it whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
