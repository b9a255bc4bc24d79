"""Parsing view config values (strings from a web form, or numbers from msgpack)."""

from __future__ import annotations

from typing import Any


def choice(config: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    """A config value that must be one of ``choices``; ValueError names the bad value."""
    value = config.get(name)
    value = default if value in (None, "") else str(value).strip().lower()
    if value not in choices:
        raise ValueError(f"{name} {config.get(name)!r} is not one of {', '.join(choices)}")
    return value


def number(config: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    """A numeric config value within lo..hi; ValueError names the bad value."""
    value = config.get(name)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not lo <= out <= hi:
        raise ValueError(f"{name} {value!r} is out of range {lo:g}..{hi:g}")
    return out


def first_output(inference_data: dict[str, Any], name: str = "") -> tuple[str, Any]:
    """The output called ``name`` (or the first one): ``(name, value)``."""
    if not inference_data:
        raise ValueError("the network gave no output")
    if name:
        if name not in inference_data:
            raise ValueError(f"no output {name!r}; outputs: {', '.join(inference_data)}")
        return name, inference_data[name]
    key = next(iter(inference_data))
    return key, inference_data[key]
