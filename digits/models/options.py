"""DIGITS's New Model form, parsed and checked: every bad value is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from digits.config import Settings

METHODS = ("standard", "custom", "previous", "pretrained")
MEANS = ("none", "image", "pixel")


def _num(form: dict[str, Any], name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = form.get(name)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a {kind.__name__}") from None
    if not lo <= number <= hi:
        raise ValueError(f"{name} {value!r} is out of range {lo:g}..{hi:g}")
    return number


def _bool(form: dict[str, Any], name: str, default: bool) -> bool:
    value = form.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool | int):
        return bool(value)
    return str(value).strip().lower() in ("1", "true", "yes", "on", "y")


def _gpus(value: Any) -> tuple[int, ...]:
    """``select_gpus``: comma-separated indexes (or a list of them, as a multi-select sends)."""
    if value is None or value == "":
        return ()
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    found: list[int] = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        if not text.isdigit():
            raise ValueError(
                f"select_gpus {value!r}: {text!r} is not a GPU index; expected indexes like 0,1"
            )
        if int(text) not in found:
            found.append(int(text))
    return tuple(found)


def _archive_key(form: dict[str, Any]) -> str | None:
    """``pretrained_archive``: a relative key of the artifact store (an upload), or None."""
    from digits.store import check_key

    key = str(form.get("pretrained_archive") or "").strip()
    if not key:
        return None
    try:
        return check_key(key)
    except ValueError:
        raise ValueError(
            f"pretrained_archive {key!r} is not a store key; expected a relative key "
            "like 'uploads/pretrained/<owner>/<id>.tar.gz'"
        ) from None


@dataclass(frozen=True)
class TrainOptions:
    """What a training run needs from the form, with DIGITS's defaults."""

    method: str = "standard"
    network: str = "lenet"
    custom_network: str = ""
    custom_network_type: str = "json"
    allow_python: bool = False
    previous_job: str | None = None
    previous_epoch: float | None = None
    epochs: float = 30.0
    batch_size: int = 64
    batch_accumulation: int = 1
    shuffle: bool = True
    seed: int | None = None
    solver: str = "SGD"
    snapshot_interval: float = 1.0
    val_interval: float = 1.0
    use_mean: str = "image"
    crop_size: int | None = None
    early_stopping: int = 0
    gpus: tuple[int, ...] = ()
    gpu_count: int | None = None
    pretrained_archive: str | None = None
    form: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_form(cls, form: dict[str, Any], settings: Settings | None = None) -> TrainOptions:
        """Parse DIGITS's field names; ValueError names the bad field and value."""
        method = str(form.get("method") or "standard")
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
        network = str(form.get("standard_networks") or "lenet").lower()
        use_mean = str(form.get("use_mean") or "image").lower()
        if use_mean not in MEANS:
            raise ValueError(f"use_mean {use_mean!r} is not one of {', '.join(MEANS)}")
        kind = str(form.get("custom_network_type") or "json").lower()
        if kind not in ("json", "python"):
            raise ValueError(f"custom_network_type {kind!r} is not one of json, python")
        if method == "custom" and not str(form.get("custom_network") or "").strip():
            raise ValueError("custom_network is empty: paste a Keras model JSON")
        previous = str(form.get("previous_networks") or "") or None
        archive = _archive_key(form) if method == "pretrained" else None
        if method == "previous" and not previous:
            raise ValueError("method 'previous' needs previous_networks (a model job id)")
        if method == "pretrained" and not (previous or archive):
            raise ValueError(
                "method 'pretrained' needs previous_networks (a model job id) "
                "or pretrained_archive (an uploaded model archive)"
            )
        previous_epoch = form.get("previous_network_snapshot")
        crop = _num(form, "crop_size", None, int, 1, 8192)
        seed = _num(form, "random_seed", None, int, 0, 2**31 - 1)
        return cls(
            method=method,
            network=network,
            custom_network=str(form.get("custom_network") or ""),
            custom_network_type=kind,
            allow_python=bool(settings and settings.allow_python_networks),
            previous_job=previous if method in ("previous", "pretrained") and not archive else None,
            previous_epoch=float(previous_epoch) if previous_epoch not in (None, "") else None,
            epochs=_num(form, "train_epochs", 30.0, float, 0.01, 100000),
            batch_size=_num(form, "batch_size", 64, int, 1, 65536),
            batch_accumulation=_num(form, "batch_accumulation", 1, int, 1, 1024),
            shuffle=_bool(form, "shuffle", True),
            seed=seed,
            solver=str(form.get("solver_type") or "SGD").upper(),
            snapshot_interval=_num(form, "snapshot_interval", 1.0, float, 0.0, 100000),
            val_interval=_num(form, "val_interval", 1.0, float, 0.0, 100000),
            use_mean=use_mean,
            crop_size=crop,
            early_stopping=_num(form, "early_stopping", 0, int, 0, 100000),
            gpus=_gpus(form.get("select_gpus")),
            gpu_count=_num(form, "select_gpu_count", None, int, 1, 1024),
            pretrained_archive=archive,
            form=dict(form),
        )
