"""The artifact store: datasets and models under relative keys, on a local disk or in S3."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from digits.config import Settings

_TMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
_CHUNK = 1 << 20
# Every S3 write carries a SHA-256 of its bytes, which the server checks before it stores them: a
# body torn on the way is refused, never stored (a multipart object's parts each, and the whole).
_CHECKED = {"ChecksumAlgorithm": "SHA256"}


class StoreError(Exception):
    """The store refused or failed an operation; the message names the key, never a secret."""


class NotFoundError(StoreError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


@dataclass(frozen=True)
class StoredObject:
    """One object as listed: its key, its size in bytes, when it was last written (epoch s)."""

    key: str
    size: int
    modified: float


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a relative POSIX key (or, with ``prefix``, a key prefix)."""
    body = key.rstrip("/") if prefix and isinstance(key, str) else key
    if prefix and body == "":
        return key
    bad = not isinstance(body, str) or not body or body.startswith("/") or "\\" in body
    if bad or any(part in ("", ".", "..") for part in body.split("/")):
        what = "prefix" if prefix else "key"
        raise ValueError(f"bad store {what} {key!r}: expected a relative path like 'a/b/c.lmdb'")
    return key


def _nonempty(prefix: str) -> str:
    if not prefix.strip("/"):
        raise ValueError(f"refusing to delete the whole store (prefix {prefix!r})")
    return prefix


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (the directory's own fsync)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs_durably(path: Path) -> None:
    """Make ``path`` and its missing parents, each new entry fsynced in its parent."""
    missing, up = [], path
    while not up.exists():
        missing.append(up)
        up = up.parent
    path.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        _fsync_dir(made.parent)


def _replace_durably(tmp: Path, dest: Path) -> None:
    """Rename the fsynced ``tmp`` over ``dest`` and fsync the directory: after a crash, either
    the old object or the whole new one is there, never an empty or torn one."""
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def _copy_atomic(src: Path, dest: Path) -> None:
    _mkdirs_durably(dest.parent)
    tmp = _tmp_name(dest)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        _replace_durably(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class Store(ABC):
    """Bytes under relative keys; every method is safe to repeat."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there."""

    @abstractmethod
    async def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload the local file ``path`` under ``key``."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; NotFoundError if there are none."""

    @abstractmethod
    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download ``key`` to the local file ``path`` (written whole, then renamed)."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix``, sorted."""

    @abstractmethod
    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        """Every object under ``prefix`` with its size and modified time, sorted by key."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix``; return how many were removed."""

    @abstractmethod
    def url(self, key: str) -> str:
        """The full URL of ``key`` (file:///... or s3://bucket/...)."""

    async def close(self) -> None:
        """Release connections (nothing to do for a local store)."""
        return None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FileStore(Store):
    """A directory tree; writes go to a temporary name and are renamed when complete."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        check_key(key, prefix=prefix)
        path = (self.root / key).resolve()
        if path != self.root and not path.is_relative_to(self.root):
            raise ValueError(f"store key {key!r} escapes the store root {str(self.root)!r}")
        return path

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        _mkdirs_durably(path.parent)
        tmp = _tmp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _replace_durably(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"no object {key!r} in {self.root.as_uri()}")
        return path

    def _list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rsplit("/", 1)[0], prefix=True) if "/" in prefix else self.root
        check_key(prefix, prefix=True)
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not _TMP.match(name):
                    keys.append(key)
        return sorted(keys)

    def _list_objects(self, prefix: str) -> list[StoredObject]:
        found = []
        for key in self._list(prefix):
            try:
                st = (self.root / key).stat()
            except FileNotFoundError:
                continue  # removed since it was listed
            found.append(StoredObject(key=key, size=st.st_size, modified=st.st_mtime))
        return found

    def _delete_prefix(self, prefix: str) -> int:
        keys = self._list(_nonempty(prefix))
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        if prefix.endswith("/"):
            top = self._path(prefix, prefix=True)
            for dirpath, _dirs, _files in sorted(os.walk(top), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return len(keys)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, bytes(data))

    async def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        await asyncio.to_thread(_copy_atomic, Path(path), self._path(key))

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(lambda: self._existing(key).read_bytes())

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        await asyncio.to_thread(lambda: _copy_atomic(self._existing(key), Path(path)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(lambda: self._path(key).is_file())

    async def list(self, prefix: str = "") -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        return await asyncio.to_thread(self._list_objects, prefix)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(lambda: self._path(key).unlink(missing_ok=True))

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, prefix)

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


class S3Store(Store):
    """Objects in an S3 bucket under a prefix; the client connects on first use."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        page_size: int = 1000,
        part_size: int = 64 << 20,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url, self.region = endpoint_url, region
        self._creds = (access_key, secret_key)
        self.page_size, self.part_size = page_size, max(part_size, 5 << 20)
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        where = f"bucket={self.bucket!r}, prefix={self.prefix!r}"
        return f"S3Store({where}, endpoint_url={self.endpoint_url!r})"

    def _key(self, key: str, *, prefix: bool = False) -> str:
        check_key(key, prefix=prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                from aiobotocore.session import get_session

                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self._creds[0],
                        aws_secret_access_key=self._creds[1],
                    )
                )
                self._stack = stack
            return self._client

    def _error(self, exc: Exception, op: str, key: str) -> StoreError:
        where = f"s3://{self.bucket}/{key}"
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        if str(code) in ("404", "NoSuchKey", "NotFound"):
            return NotFoundError(f"no object {key!r} in s3://{self.bucket}")
        return StoreError(f"S3 {op} {where} failed: {code}")

    async def _call(self, op: str, key: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._s3()
        try:
            return await getattr(client, op)(Bucket=self.bucket, **kw)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, op, key) from None

    async def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        await self._call("put_object", full, Key=full, Body=bytes(data), **_CHECKED)

    async def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        full = self._key(key)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size <= self.part_size:
                data = await asyncio.to_thread(f.read)
                await self._call("put_object", full, Key=full, Body=data, **_CHECKED)
                return
            up = await self._call("create_multipart_upload", full, Key=full, **_CHECKED)
            kw = {"Key": full, "UploadId": up["UploadId"]}
            try:
                parts = []
                while chunk := await asyncio.to_thread(f.read, self.part_size):
                    n = len(parts) + 1
                    r = await self._call(
                        "upload_part", full, PartNumber=n, Body=chunk, **kw, **_CHECKED
                    )
                    part = {"PartNumber": n, "ETag": r["ETag"]}
                    if r.get("ChecksumSHA256"):  # some S3-compatible servers keep none
                        part["ChecksumSHA256"] = r["ChecksumSHA256"]
                    parts.append(part)
                await self._call(
                    "complete_multipart_upload", full, MultipartUpload={"Parts": parts}, **kw
                )
            except BaseException:
                with suppress(StoreError):
                    await self._call("abort_multipart_upload", full, **kw)
                raise

    async def _body(self, full: str) -> Any:
        return (await self._call("get_object", full, Key=full))["Body"]

    async def get(self, key: str) -> bytes:
        full = self._key(key)
        async with await self._body(full) as body:
            return await body.read()

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        full, dest = self._key(key), Path(path)
        async with await self._body(full) as body:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_name(dest)
            try:
                with open(tmp, "wb") as f:
                    async for chunk in body.iter_chunks(_CHUNK):
                        await asyncio.to_thread(f.write, chunk)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            await self._call("head_object", full, Key=full)
        except NotFoundError:
            return False
        return True

    async def _listed(self, prefix: str) -> list[dict[str, Any]]:
        """The raw entries (Key, Size, LastModified) under ``prefix``, page by page."""
        full = self._key(prefix, prefix=True)
        token: dict[str, str] = {}
        entries: list[dict[str, Any]] = []
        while True:
            page = await self._call(
                "list_objects_v2", full, Prefix=full, MaxKeys=self.page_size, **token
            )
            entries += page.get("Contents", ())
            if not page.get("IsTruncated"):
                return entries
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    async def list(self, prefix: str = "") -> list[str]:
        return sorted(self._relative(obj["Key"]) for obj in await self._listed(prefix))

    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        found = [
            StoredObject(
                key=self._relative(obj["Key"]),
                size=int(obj.get("Size", 0)),
                modified=obj["LastModified"].timestamp(),
            )
            for obj in await self._listed(prefix)
        ]
        return sorted(found, key=lambda o: o.key)

    async def delete(self, key: str) -> None:
        full = self._key(key)
        await self._call("delete_object", full, Key=full)

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list(_nonempty(prefix))
        for i in range(0, len(keys), 1000):
            objects = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            r = await self._call(
                "delete_objects",
                self._key(prefix, prefix=True),
                Delete={"Objects": objects, "Quiet": True},
            )
            if r.get("Errors"):
                first = r["Errors"][0]
                raise StoreError(
                    f"S3 delete_objects s3://{self.bucket}/{first.get('Key')} failed: "
                    f"{first.get('Code')} ({len(r['Errors'])} keys not deleted)"
                )
        return len(keys)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    async def close(self) -> None:
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Store:
    """A Store for ``file:///abs/path`` or ``s3://bucket[/prefix]``."""
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path:
        return FileStore(unquote(parsed.path))
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Store(parsed.netloc, parsed.path, endpoint_url, region, access_key, secret_key)
    raise ValueError(
        f"unsupported store URL {url!r}; expected file:///absolute/path or s3://bucket[/prefix]"
    )


def store_from_settings(settings: Settings) -> Store:
    """The Store named by ``settings.store_url`` (S3 credentials from the default AWS chain)."""
    return open_store(
        settings.store_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
