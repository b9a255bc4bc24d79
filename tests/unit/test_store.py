"""The artifact store: FileStore on a temporary directory, S3Store against a real moto server."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from digits import store as store_mod
from digits.config import Settings
from digits.store import (
    FileStore,
    NotFoundError,
    S3Store,
    StoreError,
    open_store,
    store_from_settings,
)

BAD_KEYS = ["", "/abs/key", "a/../b", "..", "a\\b", "a//b", "a/", "./a", "a/./b"]
CREDS = {"access_key": "testing", "secret_key": "testing"}


# ---------------------------------------------------------------- FileStore


async def test_file_round_trip(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    await store.put("datasets/j1/labels.txt", b"cat\ndog\n")
    await store.put("datasets/j1/train_db/shard-00001.lmdb", b"x" * 10)
    await store.put("models/m1/info.json", b"{}")
    assert await store.get("datasets/j1/labels.txt") == b"cat\ndog\n"
    assert await store.exists("models/m1/info.json")
    assert not await store.exists("models/m1/nope.json")
    assert await store.list() == [
        "datasets/j1/labels.txt",
        "datasets/j1/train_db/shard-00001.lmdb",
        "models/m1/info.json",
    ]
    assert await store.list("datasets/j1/train") == ["datasets/j1/train_db/shard-00001.lmdb"]
    assert await store.list("datasets/") == await store.list("datasets")
    assert await store.list("nothing/here/") == []
    await store.put("models/m1/info.json", b'{"v": 2}')  # replace
    assert await store.get("models/m1/info.json") == b'{"v": 2}'
    await store.delete("models/m1/info.json")
    await store.delete("models/m1/info.json")  # a missing key is not an error
    assert not await store.exists("models/m1/info.json")
    assert await store.delete_prefix("datasets/j1/") == 2
    assert await store.list() == []
    assert not (tmp_path / "root" / "datasets" / "j1").exists()
    with pytest.raises(ValueError, match="whole store"):
        await store.delete_prefix("")
    await store.close()


async def test_file_missing_key(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(NotFoundError, match="models/none/info.json") as info:
        await store.get("models/none/info.json")
    assert isinstance(info.value, KeyError) and isinstance(info.value, StoreError)
    with pytest.raises(NotFoundError):
        await store.get_file("models/none/info.json", tmp_path / "out")


async def test_file_put_get_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store = FileStore(tmp_path / "root")
    await store.put_file("models/m/snapshot_1.ckpt", src)
    dest = tmp_path / "deep" / "dir" / "out.bin"
    await store.get_file("models/m/snapshot_1.ckpt", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]


async def test_file_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    moves: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: Path, dst: Path) -> None:
        assert Path(dst).exists() is False or Path(dst).read_bytes() == b"old"
        moves.append((Path(src), Path(dst)))
        real_replace(src, dst)

    await store.put("a/b.bin", b"old")
    monkeypatch.setattr(store_mod.os, "replace", spy)
    await store.put("a/b.bin", b"new")
    ((src, dst),) = moves
    assert dst == tmp_path / "a" / "b.bin"
    assert src.parent == dst.parent and src.name.startswith(".b.bin.") and src.suffix == ".tmp"

    def broken(src: Path, dst: Path) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store_mod.os, "replace", broken)
    with pytest.raises(OSError, match="disk on fire"):
        await store.put("a/b.bin", b"newer")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]  # no temp left
    assert await store.get("a/b.bin") == b"new"
    (tmp_path / "a" / f".c.bin.{uuid.uuid4().hex}.tmp").write_bytes(b"half")  # a crashed writer
    assert await store.list() == ["a/b.bin"]


@pytest.mark.parametrize("how", ["put", "put_file"])
async def test_file_writes_are_durable_before_they_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Power-loss safety: the data is fsynced before the rename, the directory after it, and each
    # new directory's entry in its parent, so an acknowledged write survives a crash whole.
    root = tmp_path / "store"
    store = FileStore(root)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    monkeypatch.setattr(store_mod.os, "replace", replace)
    src = tmp_path / "shard.bin"
    src.write_bytes(b"x" * 3000)
    if how == "put":
        await store.put("datasets/j/shard.bin", src.read_bytes())
    else:
        await store.put_file("datasets/j/shard.bin", src)
    dest = root / "datasets" / "j" / "shard.bin"
    assert dest.read_bytes() == src.read_bytes()
    kinds = [(kind, Path(path)) for kind, path in events]
    at = kinds.index(("replace", dest))
    written = [p for k, p in kinds[:at] if k == "fsync" and p.name.startswith(".shard.bin.")]
    assert written, f"the data was not fsynced before the rename: {events}"
    assert ("fsync", dest.parent) in kinds[at:], f"no directory fsync after the rename: {events}"
    for made in (root / "datasets", root / "datasets" / "j"):
        assert ("fsync", made.parent) in kinds[:at], f"{made}'s entry was not fsynced: {events}"


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_file_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(ValueError, match="bad store key") as info:
        await store.put(key, b"x")
    assert repr(key) in str(info.value)
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        store.url(key)


async def test_file_never_escapes_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"private")
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = FileStore(root)
    with pytest.raises(ValueError, match="escapes"):
        await store.put("link/x.bin", b"x")
    with pytest.raises(ValueError, match="escapes"):
        await store.get("link/secret.txt")
    with pytest.raises(ValueError):
        await store.list("../")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_file_list_objects_gives_sizes_and_modified_times(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    await store.put("uploads/pretrained/a/1.tar.gz", b"x" * 10)
    await store.put("uploads/pretrained/b.tar.gz", b"yy")
    await store.put("models/m/info.json", b"{}")
    old = time.time() - 7200
    os.utime(tmp_path / "root" / "uploads/pretrained/b.tar.gz", (old, old))
    # A write in progress (its temporary name) is not an object yet.
    (tmp_path / "root" / "uploads/pretrained/.c.tar.gz.{}.tmp".format("0" * 32)).write_bytes(b"")
    found = await store.list_objects("uploads/")
    assert [(o.key, o.size) for o in found] == [
        ("uploads/pretrained/a/1.tar.gz", 10),
        ("uploads/pretrained/b.tar.gz", 2),
    ]
    assert abs(found[0].modified - time.time()) < 60 and found[1].modified == pytest.approx(old)
    assert [o.key for o in await store.list_objects()] == await store.list()
    assert await store.list_objects("nothing/") == []


async def test_file_list_objects_skips_a_key_removed_while_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "root")
    for name in ("a", "b", "c"):
        await store.put(f"uploads/{name}", name.encode())
    real_list = store._list

    def list_then_remove(prefix: str) -> list[str]:
        keys = real_list(prefix)
        (tmp_path / "root" / "uploads" / "b").unlink()  # another sweep got there first
        return keys

    monkeypatch.setattr(store, "_list", list_then_remove)
    assert [o.key for o in await store.list_objects("uploads/")] == ["uploads/a", "uploads/c"]


async def test_open_store_file_and_settings(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    store = open_store(root.as_uri())
    assert isinstance(store, FileStore) and store.root == root.resolve()
    await store.put("x/y.txt", b"1")
    url = store.url("x/y.txt")
    assert url == (root.resolve() / "x" / "y.txt").as_uri() and url.startswith("file:///")
    settings = Settings(data_dir=str(tmp_path / "data"))
    local = store_from_settings(settings)
    assert isinstance(local, FileStore) and local.root == (tmp_path / "data" / "store").resolve()
    remote = store_from_settings(
        Settings(store_url="s3://bkt/some/prefix/", s3_endpoint_url="http://127.0.0.1:1")
    )
    assert isinstance(remote, S3Store)  # constructing it connects to nothing
    assert remote.url("a/b") == "s3://bkt/some/prefix/a/b"
    assert remote.endpoint_url == "http://127.0.0.1:1"
    await remote.close()


@pytest.mark.parametrize(
    "url", ["http://x/y", "file://relative/path", "s3://", "/abs/path", "s3:bucket", ""]
)
def test_open_store_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="file:///.*s3://") as info:
        open_store(url)
    assert repr(url) in str(info.value)


# ---------------------------------------------------------------- S3Store against moto


def _client(url: str, service: str = "s3"):  # noqa: ANN202
    return get_session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _count_calls(store: S3Store) -> list[str]:
    """Record the name of every S3 operation ``store`` makes."""
    calls: list[str] = []
    real_call = store._call

    async def counting(op: str, key: str, **kw: object) -> object:
        calls.append(op)
        return await real_call(op, key, **kw)

    store._call = counting  # type: ignore[method-assign]
    return calls


@pytest.fixture
async def bucket(moto_url: str) -> str:
    """A fresh, empty bucket."""
    name = f"digits-{uuid.uuid4().hex[:12]}"
    async with _client(moto_url) as s3:
        await s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def s3(moto_url: str, bucket: str) -> AsyncIterator[S3Store]:
    """An S3Store under a prefix of the fresh bucket."""
    store = S3Store(bucket, "root/pre", endpoint_url=moto_url, **CREDS)
    try:
        yield store
    finally:
        await store.close()


async def test_s3_round_trip(s3: S3Store, moto_url: str) -> None:
    assert s3._client is None  # lazily connected
    await s3.put("datasets/j1/labels.txt", b"cat\ndog\n")
    await s3.put("datasets/j1/train_db/shard-00001.lmdb", b"x" * 10)
    await s3.put("models/m1/info.json", b"{}")
    async with _client(moto_url) as raw:  # outside the store's prefix: never listed
        await raw.put_object(Bucket=s3.bucket, Key="root/other", Body=b"no")
    assert await s3.get("datasets/j1/labels.txt") == b"cat\ndog\n"
    assert await s3.exists("models/m1/info.json")
    assert not await s3.exists("models/m1/none.json")
    assert await s3.list() == [
        "datasets/j1/labels.txt",
        "datasets/j1/train_db/shard-00001.lmdb",
        "models/m1/info.json",
    ]
    assert await s3.list("datasets/j1/train") == ["datasets/j1/train_db/shard-00001.lmdb"]
    assert s3.url("models/m1/info.json") == f"s3://{s3.bucket}/root/pre/models/m1/info.json"
    await s3.delete("models/m1/info.json")
    await s3.delete("models/m1/info.json")
    assert not await s3.exists("models/m1/info.json")
    assert await s3.delete_prefix("datasets/") == 2
    assert await s3.list() == []
    with pytest.raises(ValueError, match="bad store key"):
        await s3.put("a/../b", b"x")


async def test_s3_missing_key(s3: S3Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="models/none/info.json"):
        await s3.get("models/none/info.json")
    with pytest.raises(NotFoundError):
        await s3.get_file("models/none/info.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_s3_missing_bucket(moto_url: str) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=moto_url, **CREDS)
    try:
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await store.put("a", b"x")
    finally:
        await store.close()


@pytest.mark.parametrize("part_size", [64 << 20, 5 << 20])
async def test_s3_big_file(moto_url: str, bucket: str, tmp_path: Path, part_size: int) -> None:
    src = tmp_path / "shard.lmdb"
    src.write_bytes(os.urandom(12 << 20))  # > 5 MiB: multipart when part_size is 5 MiB
    store = S3Store(bucket, endpoint_url=moto_url, part_size=part_size, **CREDS)
    calls = _count_calls(store)
    try:
        await store.put_file("datasets/j/train_db/shard-00001.lmdb", src)
        assert calls.count("upload_part") == (3 if part_size == 5 << 20 else 0)
        dest = tmp_path / "back" / "shard.lmdb"
        await store.get_file("datasets/j/train_db/shard-00001.lmdb", dest)
        assert dest.read_bytes() == src.read_bytes()
        assert [p.name for p in dest.parent.iterdir()] == ["shard.lmdb"]
        assert await store.list() == ["datasets/j/train_db/shard-00001.lmdb"]
        assert store.url("x") == f"s3://{bucket}/x"
    finally:
        await store.close()


async def test_s3_list_paginates(moto_url: str, bucket: str) -> None:
    store = S3Store(bucket, "p", endpoint_url=moto_url, page_size=2, **CREDS)
    calls = _count_calls(store)
    try:
        keys = [f"d/{i:02d}" for i in range(7)] + ["e/0"]
        for key in reversed(keys):
            await store.put(key, key.encode())
        calls.clear()
        assert await store.list() == keys
        assert calls.count("list_objects_v2") == 4
        calls.clear()
        assert await store.list("d/") == keys[:7]
        assert calls.count("list_objects_v2") == 4
        assert await store.delete_prefix("d") == 7
        assert await store.list() == ["e/0"]
    finally:
        await store.close()


async def test_s3_list_objects_gives_sizes_and_modified_times(moto_url: str, bucket: str) -> None:
    store = S3Store(bucket, "p", endpoint_url=moto_url, page_size=2, **CREDS)
    try:
        before = time.time()
        for i in range(5):
            await store.put(f"uploads/{i}", b"z" * i)
        await store.put("models/m/info.json", b"{}")
        found = await store.list_objects("uploads/")
        assert [(o.key, o.size) for o in found] == [(f"uploads/{i}", i) for i in range(5)]
        # S3 keeps whole seconds: the server's time of each write, near this machine's.
        assert all(before - 5 <= o.modified <= time.time() + 5 for o in found)
        assert [o.key for o in await store.list_objects()] == await store.list()
    finally:
        await store.close()


async def test_s3_wrong_secret_is_redacted(moto_url: str, bucket: str) -> None:
    from moto.core import enable_iam_authentication

    async with _client(moto_url, "iam") as iam:
        await iam.create_user(UserName="digits")
        await iam.put_user_policy(
            UserName="digits",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = (await iam.create_access_key(UserName="digits"))["AccessKey"]
    access, secret = key["AccessKeyId"], key["SecretAccessKey"]
    wrong = "WRONG" + secret[5:]
    with enable_iam_authentication():
        good = S3Store(bucket, endpoint_url=moto_url, access_key=access, secret_key=secret)
        bad = S3Store(bucket, endpoint_url=moto_url, access_key=access, secret_key=wrong)
        try:
            await good.put("k", b"v")
            assert await good.get("k") == b"v"
            with pytest.raises(StoreError) as info:
                await bad.get("k")
            assert not isinstance(info.value, NotFoundError)
            message = str(info.value)
            assert "SignatureDoesNotMatch" in message and f"s3://{bucket}/k" in message
            for text in (message, repr(info.value), repr(bad), repr(good)):
                assert wrong not in text and secret not in text
            assert info.value.__cause__ is None and info.value.__suppress_context__
        finally:
            await good.close()
            await bad.close()


@pytest.mark.parametrize("part_size", [64 << 20, 5 << 20])
async def test_s3_writes_carry_a_checksum_the_server_stores(
    moto_url: str, bucket: str, tmp_path: Path, part_size: int
) -> None:
    # S3 and MinIO refuse a body whose x-amz-checksum-sha256 does not match; moto stores the
    # checksum but does not compare it, so this shows what is sent and kept, not the refusal.
    import base64
    import hashlib

    src = tmp_path / "shard.lmdb"
    src.write_bytes(os.urandom(11 << 20))
    store = S3Store(bucket, endpoint_url=moto_url, part_size=part_size, **CREDS)
    try:
        await store.put_file("big.lmdb", src)
        await store.put("small.bin", b"manifest")
    finally:
        await store.close()
    async with _client(moto_url) as s3:
        small = await s3.head_object(Bucket=bucket, Key="small.bin", ChecksumMode="ENABLED")
        expected = base64.b64encode(hashlib.sha256(b"manifest").digest()).decode()
        assert small["ChecksumSHA256"] == expected
        big = await s3.head_object(Bucket=bucket, Key="big.lmdb", ChecksumMode="ENABLED")
        assert big.get("ChecksumSHA256"), big  # the whole object's (or its parts') checksum
