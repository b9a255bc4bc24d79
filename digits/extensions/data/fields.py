"""Coerce form values (from Flask-WTF, JSON or msgpack commands) with errors naming the field.

Shared by the built-in data extensions; plugins may use it too (``digits.extensions.data.fields``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def is_blank(value: Any) -> bool:
    """Whether a form value counts as not given (None or an empty/whitespace string)."""
    return value is None or (isinstance(value, str) and not value.strip())


def get_bool(form: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """Read a checkbox-like field: bools, 0/1, and "true"/"false"/"on"/"off"/"y"/"n"."""
    value = form.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, not {value!r}")


def get_int(
    form: Mapping[str, Any],
    name: str,
    default: int | None,
    lo: int | None = None,
    hi: int | None = None,
) -> int | None:
    """Read an integer field (int or digit string) within [lo, hi]; blank gives ``default``."""
    value = form.get(name)
    if is_blank(value):
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ValueError(f"{name} must be in {bounds}, not {value}")
    return value


def get_choice(form: Mapping[str, Any], name: str, default: str, choices: Sequence[str]) -> str:
    """Read a select field whose value must be one of ``choices``."""
    value = form.get(name)
    if is_blank(value):
        return default
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{name} {value!r} is not supported; use one of {tuple(choices)}")
    return value.strip().lower()


def get_str(form: Mapping[str, Any], name: str) -> str | None:
    """Read a text field, stripped; blank gives None."""
    value = form.get(name)
    if is_blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    return value.strip()


def get_text(form: Mapping[str, Any], name: str) -> str | None:
    """Read an uploaded text file's content (str or UTF-8 bytes); empty gives None."""
    value = form.get(name)
    if value is None or (isinstance(value, str | bytes) and not value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name} is not UTF-8 text: {exc}") from None
    if isinstance(value, str):
        return value
    raise ValueError(f"{name} must be the file's text (str or bytes), not {type(value).__name__}")


def get_float(
    form: Mapping[str, Any],
    name: str,
    default: float | None,
    lo: float | None = None,
    hi: float | None = None,
) -> float | None:
    """Read a number (int, float or numeric string) within [lo, hi]; blank gives ``default``."""
    value = form.get(name)
    if is_blank(value):
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not isinstance(value, int | float) or value != value:  # NaN is not a number here
        raise ValueError(f"{name} must be a number, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ValueError(f"{name} must be in {bounds}, not {value}")
    return float(value)
