"""digits.s3 and the classification extension's S3 source against a real S3 endpoint (moto)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiobotocore.session import get_session
from PIL import Image

from digits.extensions.data.imageClassification import DataIngestion
from digits.natsserver import free_port
from digits.s3 import S3Error, fetch_objects, is_missing, list_objects, s3_client, split_s3_url
from digits.utils.constants import TEST_DB, TRAIN_DB, VAL_DB

CREDS = ("testing", "testing")


def _raw(url: str, service: str = "s3"):  # noqa: ANN202
    return get_session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=CREDS[0],
        aws_secret_access_key=CREDS[1],
    )


def _put(url: str, bucket: str, objects: dict[str, bytes]) -> None:
    """Create ``bucket`` if needed and store ``objects`` in it (from sync code)."""

    async def put() -> None:
        async with _raw(url) as s3:
            try:
                await s3.create_bucket(Bucket=bucket)
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass
            for key, body in objects.items():
                await s3.put_object(Bucket=bucket, Key=key, Body=body)

    asyncio.run(put())


@pytest.fixture
def bucket(moto_url: str) -> str:
    """A fresh, empty bucket."""
    name = f"digits-{uuid.uuid4().hex[:12]}"
    _put(moto_url, name, {})
    return name


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), value, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _iam_user(url: str) -> tuple[str, str]:
    """A moto IAM user allowed s3:*; its (access key, secret key)."""

    async def create() -> tuple[str, str]:
        async with _raw(url, "iam") as iam:
            name = f"digits-{uuid.uuid4().hex[:8]}"
            await iam.create_user(UserName=name)
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
            await iam.put_user_policy(
                UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy)
            )
            key = (await iam.create_access_key(UserName=name))["AccessKey"]
            return key["AccessKeyId"], key["SecretAccessKey"]

    return asyncio.run(create())


# ---------------------------------------------------------------- digits.s3


async def test_list_paginates(moto_url: str, bucket: str) -> None:
    bodies = {f"p/d/{i:02d}.bin": bytes([i]) * (i + 1) for i in range(7)}
    _other = {"q/outside": b"no", "p": b"no, not under p/"}
    async with _raw(moto_url) as raw:
        for key, body in {**bodies, **_other}.items():
            await raw.put_object(Bucket=bucket, Key=key, Body=body)
    calls: list[str] = []
    async with s3_client(moto_url, *CREDS) as client:
        client.meta.events.register(
            "before-call.s3.ListObjectsV2", lambda **kw: calls.append(kw["params"]["url_path"])
        )
        found = [o async for o in list_objects(client, bucket, "p/", page_size=2)]
        assert len(calls) == 4  # 7 keys, 2 per page
        assert [o.key for o in found] == sorted(bodies)
        for obj in found:
            assert obj.size == len(bodies[obj.key])
            assert obj.etag == hashlib.md5(bodies[obj.key]).hexdigest()  # quotes stripped
        calls.clear()
        assert len([o async for o in list_objects(client, bucket, "p/")]) == 7
        assert len(calls) == 1
        assert [o async for o in list_objects(client, bucket, "nothing/")] == []


async def test_fetch_many_with_one_missing(moto_url: str, bucket: str, tmp_path: Path) -> None:
    bodies = {f"img/{i:03d} x.png": _png(i) for i in range(40)}
    bodies["img/big.bin"] = np.random.default_rng(0).bytes(3 << 20)  # several 1 MiB chunks
    bodies["img/../escape.png"] = b"a key that looks like a path out"
    async with _raw(moto_url) as raw:
        for key, body in bodies.items():
            await raw.put_object(Bucket=bucket, Key=key, Body=body)
    wanted = [*bodies, "img/missing.png", "img/000 x.png"]  # a missing key and a duplicate
    dest = tmp_path / "fetched"
    async with s3_client(moto_url, *CREDS, concurrency=8) as client:
        got = await fetch_objects(client, bucket, wanted, dest, concurrency=8)
    assert list(got) == list(dict.fromkeys(wanted))
    missing = got.pop("img/missing.png")
    assert isinstance(missing, S3Error) and is_missing(missing)
    assert f"s3://{bucket}/img/missing.png" in str(missing) and "NoSuchKey" in str(missing)
    for key, path in got.items():
        assert isinstance(path, Path), (key, path)
        assert path.parent == dest and path.read_bytes() == bodies[key]
    assert got["img/007 x.png"].name.endswith("-007_x.png")
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in got.values())
    async with s3_client(moto_url, *CREDS) as client:
        assert await fetch_objects(client, bucket, [], dest) == {}


async def test_missing_bucket_is_named(moto_url: str, tmp_path: Path) -> None:
    async with s3_client(moto_url, *CREDS) as client:
        with pytest.raises(S3Error) as info:
            [o async for o in list_objects(client, "no-such-bucket-x", "train/")]
        assert str(info.value) == (
            "S3 list s3://no-such-bucket-x/train/ failed: NoSuchBucket: bucket "
            f"'no-such-bucket-x' does not exist at {moto_url}"
        )
        assert info.value.code == "NoSuchBucket" and info.value.__suppress_context__
        with pytest.raises(S3Error, match="NoSuchBucket: bucket 'no-such-bucket-x'"):
            await fetch_objects(client, "no-such-bucket-x", ["a", "b", "c"], tmp_path / "d")
    assert not any((tmp_path / "d").iterdir())


async def test_wrong_credentials_never_show_the_secret(
    moto_url: str, bucket: str, tmp_path: Path
) -> None:
    from moto.core import enable_iam_authentication

    await asyncio.to_thread(_put, moto_url, bucket, {"train/cat/a.png": b"x"})
    access, secret = await asyncio.to_thread(_iam_user, moto_url)
    wrong = "WRONG" + secret[5:]
    # (moto's signature check trips on a "/" in the query string, so the prefix has none)
    with enable_iam_authentication():
        async with s3_client(moto_url, access, secret) as good:
            assert [o.key async for o in list_objects(good, bucket, "train")] == ["train/cat/a.png"]
        async with s3_client(moto_url, access, wrong) as bad:
            with pytest.raises(S3Error) as info:
                [o async for o in list_objects(bad, bucket, "train")]
            with pytest.raises(S3Error) as fetch_info:
                await fetch_objects(bad, bucket, ["train/cat/a.png"], tmp_path)
    assert str(info.value) == (
        f"S3 list s3://{bucket}/train failed: SignatureDoesNotMatch "
        "(check the access key and secret key)"
    )
    assert "SignatureDoesNotMatch" in str(fetch_info.value)
    for exc in (info.value, fetch_info.value):
        for text in (str(exc), repr(exc)):
            assert wrong not in text and secret not in text
        assert exc.__cause__ is None and exc.__suppress_context__


async def test_unreachable_and_bad_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with s3_client(url, *CREDS, attempts=1) as client:
        with pytest.raises(S3Error, match=f"cannot reach the endpoint {url}"):
            [o async for o in list_objects(client, "b", "p/")]
    with pytest.raises(S3Error, match="bad S3 endpoint URL"):
        async with s3_client("http://user:pw@[::1", *CREDS):
            pass


def test_split_s3_url() -> None:
    assert split_s3_url("s3://b/train/cat/a b.png") == ("b", "train/cat/a b.png")
    for bad in ("s3://b", "s3:///k", "http://b/k", "b/k"):
        with pytest.raises(ValueError):
            split_s3_url(bad)


# ---------------------------------------------------------------- the extension's S3 source


def _dataset(url: str, bucket: str, counts: dict[str, int], extra: dict[str, bytes]) -> None:
    objects = {
        f"train/{label}/img{i:02d}.png": _png(i) for label, n in counts.items() for i in range(n)
    }
    _put(url, bucket, {**objects, **extra})


def _s3_form(url: str, bucket: str, **form: object) -> dict[str, object]:
    base = {
        "method": "s3",
        "s3_endpoint_url": url,
        "s3_bucket": bucket,
        "s3_path": "train",
        "s3_accesskey": CREDS[0],
        "s3_secretkey": CREDS[1],
    }
    return {**base, **form}


def test_itemize_s3_split_counts_and_labels(moto_url: str, bucket: str, tmp_path: Path) -> None:
    extra = {
        "train/cat/notes.txt": b"not an image",
        "train/readme.png": b"beside the class prefixes",
        "train/dog/.hidden.png": b"hidden",
        "other/fish/x.png": _png(1),
    }
    _dataset(moto_url, bucket, {"cat": 10, "dog": 10, "red_fox": 10}, extra)
    ext = DataIngestion(data_roots=[str(tmp_path)], **_s3_form(moto_url, bucket, s3_pct_val=20))
    train, val = ext.itemize_entries(TRAIN_DB), ext.itemize_entries(VAL_DB)
    assert (len(train), len(val), len(ext.itemize_entries(TEST_DB))) == (24, 6, 0)
    assert ext.get_labels() == ["cat", "dog", "red fox"]
    assert Counter(label for _, label in train) == {0: 8, 1: 8, 2: 8}
    assert Counter(label for _, label in val) == {0: 2, 1: 2, 2: 2}
    dirs = ["cat", "dog", "red_fox"]
    for url, label in train + val:
        assert url.startswith(f"s3://{bucket}/train/{dirs[label]}/img") and url.endswith(".png")
    assert len({u for u, _ in train + val}) == 30
    again = DataIngestion(data_roots=[str(tmp_path)], **_s3_form(moto_url, bucket, s3_pct_val=20))
    assert again.itemize_entries(VAL_DB) == val  # the same seed gives the same split
    with pytest.raises(ValueError, match="ingest worker must fetch it"):
        ext.encode_entry(train[0])
    assert CREDS[1] not in repr(ext).replace("'s3_secretkey': '***'", "")

    # The shard worker's part, sketched: fetch, rewrite to local paths, encode.
    async def fetch() -> dict[str, Path | Exception]:
        async with s3_client(moto_url, *CREDS) as client:
            keys = [split_s3_url(u)[1] for u, _ in val]
            return await fetch_objects(client, bucket, keys, tmp_path / "shard")

    local = asyncio.run(fetch())
    for url, label in val:
        path = local[split_s3_url(url)[1]]
        assert isinstance(path, Path)
        feature, got = ext.encode_entry((str(path), label))
        assert got == label and feature.shape == (256, 256, 3)


def test_itemize_s3_limits_and_test_split(moto_url: str, bucket: str) -> None:
    _dataset(moto_url, bucket, {"a": 12, "b": 9}, {})
    form = _s3_form(
        moto_url,
        bucket,
        s3_path="/train/",
        s3_pct_val=25,
        s3_pct_test=10,
        s3_train_max_per_class=8,
    )
    ext = DataIngestion(**form)
    sizes = [len(ext.itemize_entries(s)) for s in (TRAIN_DB, VAL_DB, TEST_DB)]
    assert sizes == [10, 4, 2]  # 8 per class kept: 5/2/1 each


def test_itemize_s3_too_few_images(moto_url: str, bucket: str) -> None:
    _dataset(moto_url, bucket, {"cat": 10, "dog": 1}, {})
    ext = DataIngestion(**_s3_form(moto_url, bucket))
    with pytest.raises(ValueError, match=r"class 'dog'.*has 1 images, fewer than the minimum of 2"):
        ext.itemize_entries(TRAIN_DB)
    ext = DataIngestion(**_s3_form(moto_url, bucket, s3_train_min_per_class=1, s3_pct_val=10))
    with pytest.raises(ValueError, match=r"class 'dog'.*too few to give one to each of the 2"):
        ext.itemize_entries(TRAIN_DB)


def test_itemize_s3_needs_classes(moto_url: str, bucket: str) -> None:
    _dataset(moto_url, bucket, {"only": 5}, {"train/loose.png": _png(0)})
    with pytest.raises(ValueError, match="1 class sub-prefix.*needs at least two"):
        DataIngestion(**_s3_form(moto_url, bucket)).itemize_entries(TRAIN_DB)
    with pytest.raises(ValueError, match=f"s3://{bucket}/nothing/ has no class sub-prefixes"):
        DataIngestion(**_s3_form(moto_url, bucket, s3_path="nothing")).itemize_entries(TRAIN_DB)


async def test_itemize_s3_inside_a_running_loop(moto_url: str, bucket: str) -> None:
    await asyncio.to_thread(_dataset, moto_url, bucket, {"a": 3, "b": 3}, {})
    ext = DataIngestion(**_s3_form(moto_url, bucket, s3_pct_val=0))
    assert len(ext.itemize_entries(TRAIN_DB)) == 6  # asyncio.run moved to a worker thread


def test_itemize_s3_errors(moto_url: str) -> None:
    with pytest.raises(ValueError, match="s3_endpoint_url must be an http"):
        DataIngestion(**_s3_form("minio:9000", "b"))
    ext = DataIngestion(**_s3_form(moto_url, "no-such-bucket-y"))
    with pytest.raises(S3Error, match="bucket 'no-such-bucket-y' does not exist"):
        ext.itemize_entries(TRAIN_DB)
