"""Plugins installed with pip as a user would, and the ingest service that sees them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import digits.extensions.data as data_extensions
from tests.pluginpkg import pip_install, use_in_process

RAISER = '''
from digits.extensions.data.interface import DataIngestionInterface


class DataIngestion(DataIngestionInterface):
    """Fails on purpose: in itemize_entries or encode_entry, as its form says."""

    def itemize_entries(self, stage):
        if self.fail_in == "itemize":
            raise RuntimeError("raiser plugin: the contour index is unreadable")
        return [[stage, i] for i in range(4)] if stage == "train_db" else []

    def encode_entry(self, entry):
        raise ValueError(f"raiser plugin: cannot decode entry {entry[1]}")

    @staticmethod
    def get_category():
        return "Images"

    @staticmethod
    def get_id():
        return "test-raiser"

    @staticmethod
    def get_title():
        return "Raiser"
'''


def _setup_py(dist: str, package: str) -> str:
    return (
        "from setuptools import setup\n"
        f"setup(name={dist!r}, version='0.0.1', packages=[{package!r}],\n"
        f"      entry_points={{'digits.plugins.data': ['class={package}:DataIngestion']}})\n"
    )


def pip_install_path(source: Path, target: Path) -> None:
    """``pip install <source>`` into ``target`` (no dependencies, no index)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target)]
    subprocess.run([*cmd, str(source)], check=True, capture_output=True, timeout=300)


def make_test_plugins(root: Path) -> list[Path]:
    """Two tutorial-shaped plugins: one that raises when used, one whose import fails."""
    sources = []
    for dist, package, code in (
        ("digits_raiser_plugin", "digitsDataPluginRaiser", RAISER),
        ("digits_broken_plugin", "digitsDataPluginBroken", "import digits_no_such_module\n"),
    ):
        src = root / dist
        (src / package).mkdir(parents=True)
        (src / "setup.py").write_text(_setup_py(dist, package))
        (src / package / "__init__.py").write_text(code)
        sources.append(src)
    return sources


@pytest.fixture(scope="session")
def plugin_target(tmp_path_factory) -> Path:
    """The repository's data plugins and two failing test plugins, pip-installed into one folder."""
    target = tmp_path_factory.mktemp("site")
    pip_install("data/sunnybrook", target)
    pip_install("data/gradients", target)
    for source in make_test_plugins(tmp_path_factory.mktemp("plugin-src")):
        pip_install_path(source, target)
    return target


@pytest.fixture
def installed(plugin_target: Path) -> Iterator[Path]:
    """The plugins, importable and discovered in this process for one test."""
    use_in_process(plugin_target)
    data_extensions.get_extensions(refresh=True)
    try:
        yield plugin_target
    finally:
        sys.path.remove(str(plugin_target))
        for name in [m for m in sys.modules if m.startswith("digitsDataPlugin")]:
            del sys.modules[name]
        data_extensions.get_extensions(refresh=True)


@pytest.fixture
def plugin_ingest(stack, plugin_target: Path):
    """A real ingest service that sees the installed plugins (PYTHONPATH), small shards."""
    return stack(
        "ingest_service",
        PYTHONPATH=str(plugin_target),
        DIGITS_SHARD_SIZE="8",
        DIGITS_INGEST_PROCS="1",
        DIGITS_MAX_DELIVER="2",
    )
