"""digits.tools.upload_s3_data against a real S3 endpoint (moto) on a free port."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiobotocore.session import get_session

import digits.tools
from digits.download_data import synthetic
from digits.natsserver import free_port
from digits.tools.upload_s3_data import ConfigError, load_config, main

ACCESS = "AKIATESTACCESSKEY1"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRET"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set: 3 classes, 5 training and 2 test images each."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(root, classes=3, per_class=5, test_per_class=2, size=16)
    return root


def write_config(path: Path, **settings: str) -> Path:
    """Write an ``[S3 Config]`` file with ``settings`` (a value of None drops the key)."""
    body = "".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None)
    path.write_text("[S3 Config]\n" + body)
    return path


def settings(url: str, bucket: str, prefix: str = "mnist") -> dict[str, str]:
    """A complete set of config values."""
    keys = ("endpoint", "accesskey", "secretkey", "bucket", "prefix")
    return dict(zip(keys, (url, ACCESS, SECRET, bucket, prefix), strict=True))


def s3_objects(url: str, bucket: str) -> dict[str, bytes]:
    """Every object in ``bucket``, key to bytes."""

    async def fetch() -> dict[str, bytes]:
        client = get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        async with client as s3:
            found: dict[str, bytes] = {}
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    response = await s3.get_object(Bucket=bucket, Key=item["Key"])
                    async with response["Body"] as body:
                        found[item["Key"]] = await body.read()
                    assert response["ContentType"] == "image/png"
            return found

    return asyncio.run(fetch())


def expected_keys(root: Path, prefix: str) -> dict[str, bytes]:
    """The keys the tool should make for the dataset at ``root``, with their bytes."""
    lead = f"{prefix}/" if prefix else ""
    return {
        lead + str(p.relative_to(root)): p.read_bytes()
        for phase in ("train", "test")
        for p in (root / phase).glob("*/*.png")
    }


def test_upload(
    moto_url: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bucket = f"digits-{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path / "upload_config.cfg", **settings(moto_url, bucket))
    assert main([str(dataset), "--config", str(config), "--concurrency", "4"]) == 0
    out, err = capsys.readouterr()
    assert f"Creating bucket {bucket}" in err
    assert "Uploading [" in err and "21/21 files" in err
    assert f"Uploaded 21 files to s3://{bucket}/mnist at {moto_url}" in out
    assert SECRET not in out + err and ACCESS not in out + err
    objects = s3_objects(moto_url, bucket)
    assert objects == expected_keys(dataset, "mnist")
    assert sorted({k.split("/")[1] for k in objects}) == ["test", "train"]
    assert "mnist/train/2/" in "".join(objects)  # label folders are kept
    # Again into the existing bucket: no creation, same objects.
    assert main([str(dataset), "--config", str(config), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "Creating bucket" not in err and "Uploading [" not in err
    assert s3_objects(moto_url, bucket) == objects


def test_upload_without_prefix_or_test(moto_url: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    synthetic.generate(root, classes=2, per_class=3, test_per_class=0, size=8)
    bucket = f"digits-{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path / "c.cfg", **settings(moto_url, bucket, prefix=""))
    assert main([str(root), "--config", str(config)]) == 0
    assert sorted(s3_objects(moto_url, bucket)) == sorted(expected_keys(root, ""))
    assert all(k.startswith("train/") for k in expected_keys(root, ""))


def test_missing_key(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    values = settings("http://127.0.0.1:9", "b") | {"secretkey": None}
    config = write_config(tmp_path / "upload_config.cfg", **values)  # type: ignore[arg-type]
    assert main([str(dataset), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"missing key 'secretkey' in [S3 Config] of {config}" in err
    assert "Traceback" not in err and ACCESS not in err
    with pytest.raises(ConfigError, match="empty key 'bucket'"):
        load_config(write_config(tmp_path / "e.cfg", **settings("http://h", "")))


def test_config_errors(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.cfg"
    assert main([str(dataset), "--config", str(missing)]) == 1
    assert f"config file {missing} not found" in capsys.readouterr().err
    other = tmp_path / "other.cfg"
    other.write_text("[Other]\nendpoint = x\n")
    with pytest.raises(ConfigError, match=r"has no \[S3 Config\] section"):
        load_config(other)
    broken = tmp_path / "broken.cfg"
    broken.write_text(f"[S3 Config]\nsecretkey = {SECRET}\n  \n{SECRET}\n= x\n")
    with pytest.raises(ConfigError, match="cannot parse line") as info:
        load_config(broken)
    assert SECRET not in str(info.value)
    headless = tmp_path / "headless.cfg"
    headless.write_text(f"secretkey = {SECRET}\n")
    with pytest.raises(ConfigError, match="before any") as info:
        load_config(headless)
    assert SECRET not in str(info.value)


def test_shipped_config_and_repr() -> None:
    config = load_config(Path(digits.tools.__file__).parent / "upload_config.cfg")
    assert config.bucket == "digits" and config.prefix == "mnist"
    assert config.secretkey not in repr(config) and config.accesskey not in repr(config)


def test_unreachable_endpoint_hides_secrets(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    password = "pAssw0rdInUrl"
    url = f"http://{ACCESS}:{password}@127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "c.cfg", **settings(url, "bucket-x"))
    assert main([str(dataset), "--config", str(config), "--attempts", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: S3 head_bucket s3://bucket-x at http://127.0.0.1:")
    assert "Traceback" not in err
    assert SECRET not in err and ACCESS not in err and password not in err
    # A malformed endpoint is refused without being echoed.
    bad = write_config(tmp_path / "bad.cfg", **settings(f"http://u:{SECRET}@h", "b"))
    assert main([str(dataset), "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "key 'endpoint' in [S3 Config]" in err and SECRET not in err


def test_no_train_folder(tmp_path: Path, moto_url: str, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "c.cfg", **settings(moto_url, "b"))
    assert main([str(tmp_path / "empty"), "--config", str(config)]) == 1
    assert "has no train/ folder" in capsys.readouterr().err
