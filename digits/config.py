"""Settings from ``DIGITS_*`` environment variables, with errors that name the bad value."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


class ConfigError(ValueError):
    """A DIGITS_* variable holds a value that cannot be used."""


def _default_data_dir() -> str:
    return str(Path.home() / ".digits")


@dataclass(frozen=True)
class Settings:
    """Everything a service reads from its environment, parsed and checked."""

    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    data_dir: str = field(default_factory=_default_data_dir)
    store_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    data_roots: tuple[str, ...] = ()
    secret_key: str | None = field(default=None, repr=False)
    replicas: int = 1
    health_host: str = "127.0.0.1"
    health_port: int = 0
    heartbeat_s: float = 5.0
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    worker_batch: int = 1
    ingest_procs: int = 0
    shard_size: int = 1000
    watch_batch: int = 100
    model_cache_mb: int = 2048
    view_procs: int = 0  # responder processes of a view service; 0: one per core
    view_queue: int = 128  # requests a view process holds beyond those it runs; more: "busy"
    train_cache_mb: int = 1024  # decoded training samples kept in memory per job; 0: stream
    train_nice: int = 19  # a train service's CPU priority (nice): serving goes first
    hardware_s: float = 5.0
    watch_interval_s: float = 5.0
    log_level: str = "INFO"
    allow_python_networks: bool = False
    share_jobs: bool = False  # every user may use every job (DIGITS's behaviour); else owners'
    train_gpus: tuple[int, ...] = ()  # GPUs a training worker may use; empty: all it has
    upload_ttl_s: float = 86400.0  # an upload no job refers to is removed once this old
    upload_sweep_s: float = 3600.0  # how often an ingest service sweeps uploads; 0: never
    # A follower's next version starts once this many new samples and this long (defaults).
    follow_min_new_samples: int = 1
    follow_min_interval_s: float = 0.0
    # scheme://host[:port] regex that SNS certificate and SubscribeURL URLs must match; None: AWS's
    # (https://sns.<region>.amazonaws.com[.cn]). Another (e.g. a local SNS) is an operator's choice.
    sns_origin: str | None = None
    sns_confirm: bool = True  # the webhook confirms verified SNS subscriptions itself

    def __post_init__(self) -> None:
        if not self.store_url:
            store = Path(self.data_dir, "store").as_uri()
            object.__setattr__(self, "store_url", store)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read DIGITS_* variables (from ``environ`` or os.environ); ``overrides`` win."""
        env = os.environ if environ is None else environ
        kw: dict[str, object] = {}
        get = env.get
        if get("DIGITS_NATS_URL"):
            kw["nats_urls"] = _urls("DIGITS_NATS_URL", get("DIGITS_NATS_URL", ""))
        for name in ("nats_creds", "nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
            value = get(f"DIGITS_{name.upper()}")
            if value:
                kw[name] = _existing_file(f"DIGITS_{name.upper()}", value)
        if get("DIGITS_NATS_USER"):
            kw["nats_user"] = get("DIGITS_NATS_USER")
        if get("DIGITS_NATS_PASSWORD"):
            if not get("DIGITS_NATS_USER"):
                raise ConfigError(
                    "DIGITS_NATS_PASSWORD is set but DIGITS_NATS_USER is not; set both, or neither"
                )
            kw["nats_password"] = get("DIGITS_NATS_PASSWORD")
        if get("DIGITS_DATA_DIR"):
            kw["data_dir"] = str(Path(get("DIGITS_DATA_DIR", "")).expanduser())
        if get("DIGITS_STORE_URL"):
            kw["store_url"] = _store_url(get("DIGITS_STORE_URL", ""))
        if get("DIGITS_S3_ENDPOINT_URL"):
            kw["s3_endpoint_url"] = _url(
                "DIGITS_S3_ENDPOINT_URL", get("DIGITS_S3_ENDPOINT_URL", "")
            )
        if get("DIGITS_S3_REGION"):
            kw["s3_region"] = get("DIGITS_S3_REGION")
        if get("DIGITS_DATA_ROOTS"):
            roots = [r for r in get("DIGITS_DATA_ROOTS", "").split(os.pathsep) if r]
            kw["data_roots"] = tuple(str(Path(r).expanduser().resolve()) for r in roots)
        if get("DIGITS_SECRET_KEY"):
            kw["secret_key"] = get("DIGITS_SECRET_KEY")
        ints = {"replicas": (1, 5), "health_port": (0, 65535), "max_deliver": (1, 1000)}
        ints["worker_batch"] = (1, 1000)
        ints["ingest_procs"] = (0, 256)
        ints["shard_size"] = (1, 1_000_000)
        ints["watch_batch"] = (1, 100_000)
        ints["model_cache_mb"] = (16, 1 << 20)
        ints["view_procs"] = (0, 256)
        ints["view_queue"] = (0, 100_000)
        ints["train_cache_mb"] = (0, 1 << 20)
        ints["train_nice"] = (0, 19)
        for name, (lo, hi) in ints.items():
            var = f"DIGITS_{name.upper()}"
            if get(var):
                kw[name] = _int(var, get(var, ""), lo, hi)
        for name in ("heartbeat_s", "ack_wait_s", "watch_interval_s", "hardware_s"):
            var = f"DIGITS_{name.upper()}"
            if get(var):
                kw[name] = _float(var, get(var, ""), 0.05, 86400.0)
        if get("DIGITS_HEALTH_HOST"):
            kw["health_host"] = get("DIGITS_HEALTH_HOST")
        if get("DIGITS_LOG_LEVEL"):
            level = get("DIGITS_LOG_LEVEL", "").upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                raise ConfigError(
                    f"DIGITS_LOG_LEVEL={get('DIGITS_LOG_LEVEL')!r} is not one of "
                    "DEBUG, INFO, WARNING, ERROR, CRITICAL"
                )
            kw["log_level"] = level
        if get("DIGITS_ALLOW_PYTHON_NETWORKS"):
            kw["allow_python_networks"] = _bool(
                "DIGITS_ALLOW_PYTHON_NETWORKS", get("DIGITS_ALLOW_PYTHON_NETWORKS", "")
            )
        if get("DIGITS_SHARE_JOBS"):
            kw["share_jobs"] = _bool("DIGITS_SHARE_JOBS", get("DIGITS_SHARE_JOBS", ""))
        if get("DIGITS_UPLOAD_TTL_S"):
            kw["upload_ttl_s"] = _float(
                "DIGITS_UPLOAD_TTL_S", get("DIGITS_UPLOAD_TTL_S", ""), 60.0, 31_536_000.0
            )
        if get("DIGITS_FOLLOW_MIN_NEW_SAMPLES"):
            raw = get("DIGITS_FOLLOW_MIN_NEW_SAMPLES", "")
            kw["follow_min_new_samples"] = int(
                _float("DIGITS_FOLLOW_MIN_NEW_SAMPLES", raw, 0.0, 1e12)
            )
        if get("DIGITS_FOLLOW_MIN_INTERVAL_S"):
            raw = get("DIGITS_FOLLOW_MIN_INTERVAL_S", "")
            kw["follow_min_interval_s"] = _float("DIGITS_FOLLOW_MIN_INTERVAL_S", raw, 0.0, 1e9)
        if get("DIGITS_UPLOAD_SWEEP_S"):
            sweep = get("DIGITS_UPLOAD_SWEEP_S", "")
            kw["upload_sweep_s"] = _float("DIGITS_UPLOAD_SWEEP_S", sweep, 0.0, 604800.0)
            if 0 < float(sweep) < 1:
                raise ConfigError(f"DIGITS_UPLOAD_SWEEP_S={sweep!r}: expected 0 (off) or 1..604800")
        if get("DIGITS_TRAIN_GPUS", "").strip():
            kw["train_gpus"] = _indexes("DIGITS_TRAIN_GPUS", get("DIGITS_TRAIN_GPUS", ""))
        if get("DIGITS_SNS_ORIGIN"):
            kw["sns_origin"] = _regex("DIGITS_SNS_ORIGIN", get("DIGITS_SNS_ORIGIN", ""))
        if get("DIGITS_SNS_CONFIRM"):
            kw["sns_confirm"] = _bool("DIGITS_SNS_CONFIRM", get("DIGITS_SNS_CONFIRM", ""))
        kw.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}")
        return cls(**kw)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The DIGITS_* variables that reproduce these settings (for child processes)."""
        env = {
            "DIGITS_NATS_URL": ",".join(self.nats_urls),
            "DIGITS_DATA_DIR": self.data_dir,
            "DIGITS_STORE_URL": self.store_url,
            "DIGITS_S3_REGION": self.s3_region,
            "DIGITS_REPLICAS": str(self.replicas),
            "DIGITS_HEARTBEAT_S": str(self.heartbeat_s),
            "DIGITS_ACK_WAIT_S": str(self.ack_wait_s),
            "DIGITS_MAX_DELIVER": str(self.max_deliver),
            "DIGITS_WORKER_BATCH": str(self.worker_batch),
            "DIGITS_INGEST_PROCS": str(self.ingest_procs),
            "DIGITS_SHARD_SIZE": str(self.shard_size),
            "DIGITS_WATCH_BATCH": str(self.watch_batch),
            "DIGITS_MODEL_CACHE_MB": str(self.model_cache_mb),
            "DIGITS_VIEW_PROCS": str(self.view_procs),
            "DIGITS_VIEW_QUEUE": str(self.view_queue),
            "DIGITS_TRAIN_CACHE_MB": str(self.train_cache_mb),
            "DIGITS_TRAIN_NICE": str(self.train_nice),
            "DIGITS_HARDWARE_S": str(self.hardware_s),
            "DIGITS_WATCH_INTERVAL_S": str(self.watch_interval_s),
            "DIGITS_LOG_LEVEL": self.log_level,
            "DIGITS_HEALTH_HOST": self.health_host,
            "DIGITS_UPLOAD_TTL_S": str(self.upload_ttl_s),
            "DIGITS_UPLOAD_SWEEP_S": str(self.upload_sweep_s),
            "DIGITS_FOLLOW_MIN_NEW_SAMPLES": str(self.follow_min_new_samples),
            "DIGITS_FOLLOW_MIN_INTERVAL_S": str(self.follow_min_interval_s),
        }
        optional = {
            "DIGITS_NATS_CREDS": self.nats_creds,
            "DIGITS_NATS_USER": self.nats_user,
            "DIGITS_NATS_PASSWORD": self.nats_password,
            "DIGITS_NATS_TLS_CA": self.nats_tls_ca,
            "DIGITS_NATS_TLS_CERT": self.nats_tls_cert,
            "DIGITS_NATS_TLS_KEY": self.nats_tls_key,
            "DIGITS_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "DIGITS_SECRET_KEY": self.secret_key,
            "DIGITS_SNS_ORIGIN": self.sns_origin,
        }
        env.update({k: v for k, v in optional.items() if v})
        if self.data_roots:
            env["DIGITS_DATA_ROOTS"] = os.pathsep.join(self.data_roots)
        if self.allow_python_networks:
            env["DIGITS_ALLOW_PYTHON_NETWORKS"] = "1"
        if self.share_jobs:
            env["DIGITS_SHARE_JOBS"] = "1"
        if not self.sns_confirm:
            env["DIGITS_SNS_CONFIRM"] = "0"
        if self.train_gpus:
            env["DIGITS_TRAIN_GPUS"] = ",".join(str(i) for i in self.train_gpus)
        return env


def _urls(var: str, value: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if not urls:
        raise ConfigError(f"{var}={value!r} lists no server; expected nats://host:port[,...]")
    for u in urls:
        if not u.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigError(
                f"{var}: {u!r} is not a NATS URL; expected nats://, tls://, ws:// or wss://"
            )
    return urls


def _url(var: str, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{var}={value!r} is not an http:// or https:// URL")
    return value


def _store_url(value: str) -> str:
    if not value.startswith(("file://", "s3://")):
        raise ConfigError(
            f"DIGITS_STORE_URL={value!r} is not supported; expected file:///path or s3://bucket/prefix"
        )
    return value


def _existing_file(var: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{var}={value!r}: no such file")
    return str(path)


def _int(var: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{var}={value!r} is not an integer") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{var}={value!r} is out of range; expected {lo}..{hi}")
    return number


def _float(var: str, value: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{var}={value!r} is not a number") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{var}={value!r} is out of range; expected {lo}..{hi}")
    return number


def _indexes(var: str, value: str) -> tuple[int, ...]:
    found: list[int] = []
    for part in value.split(","):
        text = part.strip()
        if not text.isdigit():
            raise ConfigError(
                f"{var}={value!r}: {text!r} is not a GPU index; expected indexes like 0,1"
            )
        if int(text) not in found:
            found.append(int(text))
    return tuple(found)


def _regex(var: str, value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{var}={value!r} is not a regular expression ({exc})") from None
    return value


def _bool(var: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var}={value!r} is not a boolean; expected 1/0, true/false, yes/no, on/off")
