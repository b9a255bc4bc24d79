"""The S3 source: ``s3://bucket/<s3_path>/<class>/<image>``, one sub-prefix per class.

Classes, labels and per-class splits are made exactly as for a folder of class sub-folders
(see folders.py); entries are ``("s3://bucket/key", label_index)``. The ingest worker downloads
the objects and rewrites the entries to local paths before calling ``encode_entry``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from digits.utils import constants
from digits.utils.image import SUPPORTED_EXTENSIONS

from .. import fields
from . import folders

Entry = tuple[str, int]
T = TypeVar("T")


@dataclass(frozen=True)
class S3Source:
    """Where the images are and how to reach them; the credentials stay out of repr()."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    def url(self, key: str = "") -> str:
        """The s3:// URL of ``key`` (or of the prefix)."""
        return f"s3://{self.bucket}/{key}"

    @property
    def base(self) -> str:
        """The listing prefix: ``s3_path`` with one trailing slash (empty for the whole bucket)."""
        path = self.prefix.strip("/")
        return f"{path}/" if path else ""


def check_endpoint(value: str | None, name: str = "s3_endpoint_url") -> str | None:
    """Return ``value`` if it is blank or an http(s) URL; ValueError naming the field otherwise."""
    if not value:
        return None
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be an http(s) URL such as http://minio:9000")
    return value


def source_from_form(form: Mapping[str, Any]) -> S3Source:
    """The S3Source of a dataset form's Use S3 fields (DIGITS's names); ValueError names one."""
    bucket = fields.get_str(form, "s3_bucket")
    if not bucket:
        raise ValueError("s3_bucket is required for the s3 method")
    return S3Source(
        bucket=bucket,
        prefix=(fields.get_str(form, "s3_path") or "").strip("/"),
        endpoint_url=check_endpoint(fields.get_str(form, "s3_endpoint_url")),
        region=fields.get_str(form, "s3_region") or "us-east-1",
        access_key=fields.get_str(form, "s3_accesskey"),
        secret_key=fields.get_str(form, "s3_secretkey"),
    )


def redacted(form: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``form`` with its secret fields (digits.secrets.SECRET_FIELDS) shown as ***."""
    from digits.secrets import redact

    return redact(form)


def is_s3_url(path: Any) -> bool:
    """Whether an entry's path is an S3 object URL rather than a local file."""
    return isinstance(path, str) and path.startswith("s3://")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, in a fresh thread if a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s3-itemize") as pool:
        return pool.submit(asyncio.run, coro).result()


async def list_keys(source: S3Source, page_size: int = 1000) -> list[str]:
    """Every object key under the source's prefix, sorted."""
    from digits.s3 import list_objects, s3_client

    async with s3_client(
        source.endpoint_url, source.access_key, source.secret_key, source.region
    ) as client:
        return sorted(
            [o.key async for o in list_objects(client, source.bucket, source.base, page_size)]
        )


def scan_keys(source: S3Source, keys: list[str]) -> list[folders.ClassFolder]:
    """Group listed keys into classes (first sub-prefix), each with its image URLs, sorted."""
    base = source.base
    images: dict[str, list[str]] = {}
    for key in keys:
        if not key.startswith(base):
            continue
        parts = key[len(base) :].split("/")
        if len(parts) < 2 or not parts[0] or parts[0].startswith("."):
            continue  # objects beside the class prefixes are not images
        found = images.setdefault(parts[0], [])
        hidden = any(p.startswith(".") for p in parts[1:])
        if not hidden and parts[-1].lower().endswith(SUPPORTED_EXTENSIONS):
            found.append(source.url(key))
    where = source.url(base)
    if not images:
        raise ValueError(
            f"{where} has no class sub-prefixes; put each class's images under "
            f"{where}<class>/ (one sub-prefix per class)"
        )
    classes: list[folders.ClassFolder] = []
    by_label: dict[str, str] = {}
    for dirname in sorted(images):
        label = folders.label_for(dirname)
        if label in by_label:
            raise ValueError(
                f"{where}: sub-prefixes {by_label[label]!r} and {dirname!r} both give the "
                f"label {label!r}"
            )
        by_label[label] = dirname
        classes.append(folders.ClassFolder(label, dirname, tuple(sorted(images[dirname]))))
    return classes


def split_classes(
    classes: list[folders.ClassFolder],
    *,
    where: str,
    seed: int,
    pct_val: int,
    pct_test: int,
    min_per_class: int,
    max_per_class: int | None,
) -> tuple[list[str], dict[str, list[Entry]]]:
    """Return (labels, splits): each class shuffled, capped and split as the folder source does."""
    if len(classes) < 2:
        raise ValueError(
            f"{where} has {len(classes)} class sub-prefix ({classes[0].dirname!r}); "
            "classification needs at least two"
        )
    need = 1 + (pct_val > 0) + (pct_test > 0)
    splits: dict[str, list[Entry]] = {stage: [] for stage in constants.STAGES}
    for index, cls in enumerate(classes):
        urls = folders.select(
            cls,
            need=need,
            min_per_class=min_per_class,
            max_per_class=max_per_class,
            key=f"{seed}:s3_train:{cls.dirname}",
            field=where,
        )
        n_train, n_val, _ = folders.split_counts(len(urls), pct_val, pct_test)
        splits[constants.TRAIN_DB] += [(u, index) for u in urls[:n_train]]
        splits[constants.VAL_DB] += [(u, index) for u in urls[n_train : n_train + n_val]]
        splits[constants.TEST_DB] += [(u, index) for u in urls[n_train + n_val :]]
    return [c.label for c in classes], splits


def itemize(
    source: S3Source,
    seed: int,
    pcts: tuple[int, int],
    per_class: tuple[int, int | None],
    page_size: int = 1000,
) -> tuple[list[str], dict[str, list[Entry]]]:
    """List the source (blocking; digits.s3.S3Error if S3 fails) and return (labels, splits).

    ``pcts`` is (pct_val, pct_test) and ``per_class`` (min, max or None) for each class.
    """
    keys = run_sync(list_keys(source, page_size))
    return split_classes(
        scan_keys(source, keys),
        where=source.url(source.base),
        seed=seed,
        pct_val=pcts[0],
        pct_test=pcts[1],
        min_per_class=per_class[0],
        max_per_class=per_class[1],
    )


def fetch_first_error(path: str) -> ValueError:
    """The error for encoding an entry that still names an S3 object."""
    return ValueError(
        f"entry {path!r} is an S3 object: the ingest worker must fetch it into a local folder "
        "under the data roots and rewrite the entry to that path before encoding it"
    )
