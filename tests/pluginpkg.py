"""Installing the repository's plugins in tests with pip, as a user would (no network)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"


def pip_install(plugin: str, target: Path) -> Path:
    """``pip install plugins/<plugin>`` into ``target`` (no dependencies, no index); returns it.

    Services started by tests see the plugin with ``PYTHONPATH=target``; this process sees it
    after ``use_in_process(target)``.
    """
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target)]
    subprocess.run([*cmd, str(PLUGINS / plugin)], check=True, capture_output=True, timeout=300)
    return target


def use_in_process(target: Path) -> None:
    """Make the plugins installed under ``target`` importable and discoverable in this process."""
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()
