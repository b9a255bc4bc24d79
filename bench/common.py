"""What every benchmark shares: progress lines on stderr, ratios, percentiles, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any


def say(text: str) -> None:
    """Print one human-readable line to stderr."""
    print(text, file=sys.stderr, flush=True)


def ratio(a: float, b: float) -> float:
    """a / b rounded, NaN when b is zero."""
    return round(a / b, 3) if b else float("nan")


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile of ``values`` (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def package_version(name: str) -> str:
    """An installed distribution's version, or "unknown"."""
    try:
        return version(name)
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


def machine(*packages: str, **extra: Any) -> dict[str, Any]:
    """Cores, CPU model, Python, and the versions of ``packages`` (plus ``extra`` facts)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {"cores": os.cpu_count(), "cpu": cpu}
    facts["python"] = platform.python_version()
    facts.update({name.replace("-", "_"): package_version(name) for name in packages})
    facts.update(extra)
    return facts
