"""Gateway users in the ``digits-users`` KV bucket: scrypt password hashes and API token hashes.

KV I/O runs on the bus client's event loop; password hashing runs on the caller's thread, so a
slow scrypt never stalls the shared NATS connection. Failed logins are counted in the
``digits-logins`` bucket, so every gateway replica sees the same count.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from werkzeug.security import check_password_hash, generate_password_hash

from digits import subjects
from gateway.busclient import BusClient

log = logging.getLogger(__name__)

ADMIN = "admin"
MAX_RECENT_USERS = 1024  # users whose record a gateway holds for session checks
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "dgt_"
HASH_METHOD = "scrypt"


class AccountError(ValueError):
    """A user operation that cannot be done, with a reason a user can read."""


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """An API token: only the sha256 of the secret is stored."""

    sha256: str
    name: str = ""
    created_at: float = msgspec.field(default_factory=time.time)


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway user as stored in ``digits-users``."""

    username: str
    password_hash: str
    is_admin: bool = False
    tokens: dict[str, Token] = msgspec.field(default_factory=dict)  # token id -> token
    created_at: float = msgspec.field(default_factory=time.time)


_encode = msgspec.msgpack.Encoder().encode
_decode_user = msgspec.msgpack.Decoder(User).decode


def token_digest(token: str) -> str:
    """The sha256 hex digest of a raw token: what the bucket keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_username(username: str) -> str:
    """The username if it is valid; AccountError naming the rule otherwise."""
    if not isinstance(username, str) or not USERNAME.match(username):
        raise AccountError(
            f"username {username!r} must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter "
            "or digit)"
        )
    return username


def _user_key(username: str) -> str:
    return f"user.{username}"


def _token_key(digest: str) -> str:
    return f"token.{digest}"


class Accounts:
    """Create, read and verify users and their API tokens (a sync facade for Flask views)."""

    def __init__(self, bus_client: BusClient, kv: KeyValue) -> None:
        self.bus = bus_client
        self.kv = kv
        # check_password_hash on an unknown user too, so timing does not reveal who exists.
        self._dummy_hash = generate_password_hash(secrets.token_hex(8), method=HASH_METHOD)
        self._recent: dict[str, tuple[float, User | None]] = {}  # username -> (read at, user)

    @classmethod
    def open(cls, bus_client: BusClient) -> Accounts:
        """Open the users bucket through the bus client's connection."""
        assert bus_client.nc is not None
        js = bus_client.nc.jetstream()
        return cls(bus_client, bus_client.call(js.key_value(subjects.KV_USERS)))

    # --- KV access (on the bus loop) ---------------------------------------------------------

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None:
            return None
        return entry.value, entry.revision or 0

    def _read(self, username: str) -> tuple[User, int] | None:
        found = self.bus.call(self._get(_user_key(username)))
        return None if found is None else (_decode_user(found[0]), found[1])

    def get(self, username: str, max_age: float = 0.0) -> User | None:
        """The user, or None; read at most ``max_age`` seconds ago is recent enough."""
        if not isinstance(username, str) or not USERNAME.match(username):
            return None
        now = time.monotonic()
        if max_age > 0 and (held := self._recent.get(username)) and now - held[0] <= max_age:
            return held[1]
        found = self._read(username)
        user = None if found is None else found[0]
        if len(self._recent) >= MAX_RECENT_USERS:
            self._recent.clear()
        self._recent[username] = (now, user)
        return user

    def _write(self, user: User, revision: int | None) -> bool:
        """Create (revision None) or CAS-update a user record; False on a conflict."""
        key, data = _user_key(user.username), _encode(user)
        try:
            if revision is None:
                self.bus.call(self.kv.create(key, data))
            else:
                self.bus.call(self.kv.update(key, data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        finally:
            self._recent.pop(user.username, None)  # a session of this gateway sees it at once
        return True

    # --- users -------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, *, is_admin: bool = False) -> User:
        """Create a user; AccountError if the name is taken or the password is empty."""
        check_username(username)
        if not password:
            raise AccountError("the password cannot be empty")
        user = User(
            username=username,
            password_hash=generate_password_hash(password, method=HASH_METHOD),
            is_admin=is_admin,
        )
        if not self._write(user, None):
            raise AccountError(f"user {username!r} already exists")
        return user

    def set_password(self, username: str, password: str) -> User:
        """Change a user's password."""
        if not password:
            raise AccountError("the password cannot be empty")
        new_hash = generate_password_hash(password, method=HASH_METHOD)
        return self._update(username, lambda u: msgspec.structs.replace(u, password_hash=new_hash))

    def _update(self, username: str, mutate: Callable[[User], User]) -> User:
        for _ in range(50):
            found = self._read(username)
            if found is None:
                raise AccountError(f"no user {username!r}")
            user, revision = found
            changed = mutate(user)
            if self._write(changed, revision):
                return changed
        raise AccountError(f"user {username!r}: gave up after 50 conflicting updates")

    def verify_password(self, username: str, password: str) -> User | None:
        """The user if the password matches, else None (same work for an unknown user)."""
        user = self.get(username)
        if user is None:
            check_password_hash(self._dummy_hash, password)
            return None
        return user if check_password_hash(user.password_hash, password) else None

    # --- API tokens --------------------------------------------------------------------------

    def create_token(self, username: str, name: str = "") -> tuple[str, str]:
        """A new API token for the user: (token id, the raw token, shown once)."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(raw)
        token_id = digest[:12]
        token = Token(sha256=digest, name=name[:100])
        self._update(
            username, lambda u: msgspec.structs.replace(u, tokens={**u.tokens, token_id: token})
        )
        self.bus.call(self.kv.put(_token_key(digest), username.encode()))
        return token_id, raw

    def revoke_token(self, username: str, token_id: str) -> bool:
        """Revoke one of the user's tokens by id; False if there is no such token."""
        user = self.get(username)
        if user is None or token_id not in user.tokens:
            return False
        digest = user.tokens[token_id].sha256
        self._update(
            username,
            lambda u: msgspec.structs.replace(
                u, tokens={k: v for k, v in u.tokens.items() if k != token_id}
            ),
        )
        self.bus.call(self.kv.delete(_token_key(digest)))
        return True

    def verify_token(self, raw: str) -> User | None:
        """The user a raw bearer token belongs to, if it is valid and not revoked."""
        digest = token_digest(raw)
        found = self.bus.call(self._get(_token_key(digest)))
        if found is None:
            return None
        user = self.get(found[0].decode())
        if user is None:
            return None
        stored = user.tokens.get(digest[:12])
        if stored is None or not hmac.compare_digest(stored.sha256, digest):
            return None
        return user

    # --- bootstrap ---------------------------------------------------------------------------

    def ensure_admin(self, data_dir: str, password: str | None) -> User:
        """Make sure ``admin`` exists: with ``password`` if given, else a generated one on file."""
        user = self.get(ADMIN)
        if password:
            if user is None:
                try:
                    return self.create_user(ADMIN, password, is_admin=True)
                except AccountError:
                    user = self.get(ADMIN)  # another gateway created it first
            assert user is not None
            if not check_password_hash(user.password_hash, password):
                user = self.set_password(ADMIN, password)
            return user
        if user is not None:
            return user
        generated = secrets.token_urlsafe(18)
        try:
            user = self.create_user(ADMIN, generated, is_admin=True)
        except AccountError:
            found = self.get(ADMIN)
            assert found is not None
            return found
        path = Path(data_dir, "admin-password.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generated + "\n")
        os.chmod(path, 0o600)
        log.warning("admin password written to %s", path)
        return user


class LoginLimiter:
    """At most ``limit`` failed logins per (username, remote) per ``window_s``, in-process."""

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"LOGIN_LIMIT {limit!r} must be a whole number of at least 1")
        if not window_s > 0:
            raise ValueError(f"LOGIN_WINDOW_S {window_s!r} must be more than 0 seconds")
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def blocked(self, username: str, remote: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent((username, remote), now)
            if len(times) < self.limit:
                return 0.0
            return max(self.window_s - (now - times[0]), 0.0)

    def failed(self, username: str, remote: str) -> None:
        """Count a failed attempt."""
        now = time.monotonic()
        with self._lock:
            self._recent((username, remote), now).append(now)
            if len(self._failures) > 100_000:  # bound memory under a spray of usernames
                self._failures = {k: v for k, v in self._failures.items() if v}


LIMITER_BUS_TIMEOUT_S = 2.0  # a login waits at most this long for the bucket, then goes on without
UNREACHABLE_LOG_S = 60.0  # the bucket being unreachable is logged at most this often
_encode_times = msgspec.msgpack.Encoder().encode
_decode_times = msgspec.msgpack.Decoder(list[float]).decode


def login_key(username: str, remote: str) -> str:
    """The ``digits-logins`` key of (username, remote): a sha256, so any name makes a valid key."""
    raw = f"{username}\0{remote}".encode("utf-8", "surrogatepass")
    return f"login.{hashlib.sha256(raw).hexdigest()}"


class SharedLoginLimiter(LoginLimiter):
    """The login limiter of all gateway replicas: failure times in ``digits-logins``, CAS-counted.

    A key holds the wall-clock times of the last ``limit`` failures of one (username, remote);
    the bucket's TTL drops it once no failure came for that long. Every failure is counted
    in-process too: while the bucket cannot be reached (or answers slower than
    LIMITER_BUS_TIMEOUT_S), this gateway goes on with its own count alone and logs it, so a login
    never hangs on the bus and an unreachable bus never turns the limit off.
    """

    def __init__(
        self, bus_client: BusClient, kv: KeyValue, limit: int = 5, window_s: float = 60.0
    ) -> None:
        super().__init__(limit, window_s)
        ttl = subjects.KV_BUCKETS[subjects.KV_LOGINS]["ttl"]
        if window_s > ttl:
            raise ValueError(
                f"LOGIN_WINDOW_S {window_s!r} is longer than the {subjects.KV_LOGINS} bucket "
                f"keeps an entry ({ttl:g} s)"
            )
        self.bus = bus_client
        self.kv = kv
        self._logged_at = -UNREACHABLE_LOG_S

    @classmethod
    def open(
        cls, bus_client: BusClient, limit: int = 5, window_s: float = 60.0
    ) -> SharedLoginLimiter:
        """Open ``digits-logins`` through the bus client's connection."""
        assert bus_client.nc is not None
        js = bus_client.nc.jetstream()
        kv = bus_client.call(js.key_value(subjects.KV_LOGINS))
        return cls(bus_client, kv, limit, window_s)

    # --- KV access (on the bus loop) ---------------------------------------------------------

    async def _read(self, key: str) -> tuple[list[float], int | None]:
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return [], None
        try:
            times = _decode_times(entry.value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("%s: replacing an unreadable entry", subjects.KV_LOGINS)
            times = []
        return times, entry.revision

    async def _count(self, key: str, now: float) -> None:
        for _ in range(50):
            times, revision = await self._read(key)
            kept = [t for t in times if now - t < self.window_s]
            data = _encode_times((kept + [now])[-self.limit :])
            try:
                if revision is None:
                    await self.kv.create(key, data)
                else:
                    await self.kv.update(key, data, last=revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica counted one at the same time: read it again
        log.warning("%s: gave up after 50 conflicting updates", subjects.KV_LOGINS)

    def _unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged_at >= UNREACHABLE_LOG_S:
            self._logged_at = now
            log.warning(
                "%s cannot be reached (%s): failed logins are counted in this gateway only",
                subjects.KV_LOGINS,
                type(exc).__name__,
            )

    # --- the limiter -------------------------------------------------------------------------

    def blocked(self, username: str, remote: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now), over all replicas."""
        here = super().blocked(username, remote)
        try:
            times, _ = self.bus.call(
                self._read(login_key(username, remote)), timeout=LIMITER_BUS_TIMEOUT_S
            )
        except (OSError, nats.errors.Error) as exc:
            self._unreachable(exc)
            return here
        now = time.time()
        recent = sorted(t for t in times if now - t < self.window_s)
        if len(recent) < self.limit:
            return here
        shared = min(self.window_s - (now - recent[-self.limit]), self.window_s)
        return max(here, shared, 0.0)

    def failed(self, username: str, remote: str) -> None:
        """Count a failed attempt, here and in the shared bucket."""
        super().failed(username, remote)
        try:
            self.bus.call(
                self._count(login_key(username, remote), time.time()),
                timeout=LIMITER_BUS_TIMEOUT_S,
            )
        except (OSError, nats.errors.Error) as exc:
            self._unreachable(exc)
