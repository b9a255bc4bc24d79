"""How a dataset job is laid out: store keys, stage names, idempotency claims, what it watches.

The lowest module of the service: the coordinator, the shard workers, finalize and the watcher
all name things the same way through it, and it imports none of them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from digits import events
from digits.utils.constants import TEST_DB, TRAIN_DB, VAL_DB

STAGE_TITLES = {
    TRAIN_DB: "Create DB (train)",
    VAL_DB: "Create DB (val)",
    TEST_DB: "Create DB (test)",
}


def parse_title(extension: str) -> str:
    """The first stage's name, as DIGITS showed it."""
    return "Parse Folder (train/val)" if extension == events.CLASSIFICATION else "Parse entries"


def stage_title(stage: str, version: int = 1) -> str:
    """A Create DB stage's name, as DIGITS showed it; later versions say which."""
    title = STAGE_TITLES[stage]
    return title if version == 1 else f"{title[:-1]}, v{version})"


def dataset_key(job_id: str, *parts: str) -> str:
    """A key under the dataset's folder in the artifact store."""
    return "/".join(("datasets", job_id, *parts))


def shard_name(shard: int, version: int = 1) -> str:
    """File stem of a shard (versions after the first get their own names)."""
    return f"shard-{shard:05d}" if version == 1 else f"v{version:03d}-shard-{shard:05d}"


def entries_key(job_id: str, stage: str, shard: int, version: int = 1) -> str:
    """Where the coordinator keeps a shard's entries for the shard worker."""
    return dataset_key(job_id, "work", f"v{version}", stage, f"{shard_name(shard)}.msgpack")


def object_claim(bucket: str, key: str) -> str:
    """The idempotency claim of an object listed when the dataset was created."""
    return "s3obj." + hashlib.sha1(f"{bucket}/{key}".encode()).hexdigest()


def event_claim(bucket: str, key: str, etag: str) -> str:
    """The idempotency claim of one version (etag) of an object announced by a notification."""
    return "s3evt." + hashlib.sha1(f"{bucket}/{key}@{etag}".encode()).hexdigest()


def watch_config(form: dict[str, Any]) -> dict[str, Any] | None:
    """What a dataset watches (bucket, prefix, split), if its form asks for it."""
    if form.get("method") != "s3" or str(form.get("s3_watch", "")).lower() not in (
        "1",
        "true",
        "yes",
        "on",
    ):
        return None
    prefix = str(form.get("s3_path") or "").strip("/")
    return {
        "bucket": str(form.get("s3_bucket") or ""),
        "prefix": f"{prefix}/" if prefix else "",
        "pct_val": int(form.get("s3_pct_val") or 0),
        "pct_test": int(form.get("s3_pct_test") or 0),
    }
