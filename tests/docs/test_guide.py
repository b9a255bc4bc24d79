"""The user guide runs: every block marked ``test`` in docs/guide/*.md, against a real `digits up`.

A fenced block whose info string carries the word ``test`` (```` ```bash test ````,
```` ```python test ````) is run; a block with ``file=NAME``
(```` ```ini file=upload_config.cfg ````) is written to NAME in the working directory before the
next block runs. Blocks of one page run in
order, in one working directory under a temporary HOME, against one `digits up` started here with a
real S3 endpoint (moto's server) standing in for MinIO. Before running, the test changes exactly
what SUBSTITUTIONS and BLOCK_ENV below list, nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.upstack import Stack
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(400)

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide"
PAGES = (
    "README.md",
    "overview.md",
    "s3-datasets.md",
    "data-plugins.md",
    "view-plugins.md",
    "other-systems.md",
    "models.md",
    "operating.md",
)
PASSWORD = "guide-admin-password-1"
WEBHOOK_TOKEN = "guide-webhook-token-1"
BLOCK_TIMEOUT_S = 300

# What the test changes in a block's text before it runs (placeholders filled per stack):
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    # MNIST needs the network: the offline generator writes the same layout, small.
    (
        r"python -m digits\.download_data mnist (\S+)",
        r"python -m digits.download_data synthetic \1 --classes 10 --per-class 20",
    ),
    # The documented MinIO endpoint is the test's moto server.
    (re.escape("http://localhost:9000"), "{s3_url}"),
    # The documented gateway address is the test stack's free port (the NATS URL the blocks use
    # comes from `digits nats-user`, which knows the stack's port).
    (re.escape("http://localhost:5000"), "{gateway_url}"),
    # Paths into the checkout (plugins/...) are made absolute: blocks run in a temporary dir.
    (r"(?<![\w/.~-])plugins/", "{root}/plugins/"),
)
# The documented variables a reader exports before `digits up`, with the values this stack uses.
BLOCK_ENV = {"DIGITS_ADMIN_PASSWORD": PASSWORD, "DIGITS_S3_WEBHOOK_TOKEN": WEBHOOK_TOKEN}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a guide page."""

    page: str
    line: int  # where its opening fence is (1-based)
    lang: str
    text: str
    runnable: bool  # marked ``test``
    file: str | None  # marked ``file=NAME``

    def where(self) -> str:
        """Page and line, for messages."""
        return f"docs/guide/{self.page}:{self.line}"


def parse(page: str) -> list[Block]:
    """Every fenced block of a guide page, in order."""
    lines = (GUIDE / page).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})(.*)$", lines[i])
        if not fence:
            i += 1
            continue
        ticks, info = fence.group(1), fence.group(2).split()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"docs/guide/{page}:{start + 1}: unclosed code block")
        i += 1
        files = [w.partition("=")[2] for w in info[1:] if w.startswith("file=")]
        blocks.append(
            Block(
                page=page,
                line=start + 1,
                lang=info[0] if info else "",
                text="\n".join(body) + "\n",
                runnable="test" in info[1:],
                file=files[0] if files else None,
            )
        )
    return blocks


def executed(page: str) -> list[Block]:
    """The blocks of a page the test runs or writes."""
    return [b for b in parse(page) if b.runnable or b.file]


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with every SUBSTITUTIONS pattern replaced."""
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement.format(**values), text)
    return text


RUNNABLE_PAGES = [p for p in PAGES if (GUIDE / p).is_file() and executed(p)]


@dataclass
class GuideStack:
    """The stack the guide's blocks talk to, and how to run a block against it."""

    home: Path
    stack: Stack
    s3_url: str

    @property
    def values(self) -> dict[str, str]:
        """The placeholders of SUBSTITUTIONS."""
        return {
            "s3_url": self.s3_url,
            "gateway_url": self.stack.url,
            "root": str(ROOT),
        }

    def env(self) -> dict[str, str]:
        """A reader's shell: their HOME, this python first on PATH, the documented variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
        env.update(BLOCK_ENV)
        env["HOME"] = str(self.home)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env["PYTHONUNBUFFERED"] = "1"
        # As if installed with `pip install .`: the checkout is importable from any directory.
        env["PYTHONPATH"] = str(ROOT)
        return env

    def logs(self) -> str:
        """The tail of every service log, for a failure message."""
        tails = []
        for path in sorted((self.home / ".digits" / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(tails)

    def run(self, block: Block, cwd: Path) -> None:
        """Write or run one block in ``cwd``; fail naming the block, with its output."""
        text = substitute(block.text, self.values)
        if block.file:
            (cwd / block.file).write_text(text)
            return
        if block.lang in ("bash", "sh", "shell"):
            script = cwd / f"block-{block.line}.sh"
            script.write_text("set -euo pipefail\n" + text)
            command = ["bash", str(script)]
        elif block.lang == "python":
            script = cwd / f"block-{block.line}.py"
            script.write_text(text)
            command = [sys.executable, str(script)]
        else:
            raise AssertionError(f"{block.where()}: cannot run a {block.lang!r} block")
        try:
            done = subprocess.run(
                command,
                cwd=cwd,
                env=self.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output if isinstance(exc.output, str) else ""
            raise AssertionError(
                f"{block.where()} ran past {BLOCK_TIMEOUT_S}s\n{text}\n--- output\n{output}\n"
                f"{self.logs()}"
            ) from None
        print(f"--- {block.where()}\n{done.stdout}")  # shown with -rP, or on a failure
        assert done.returncode == 0, (
            f"{block.where()} exited {done.returncode}\n{text}\n--- output\n{done.stdout}\n"
            f"{self.logs()}"
        )


@pytest.fixture(scope="module")
def guide_stack(tmp_path_factory: pytest.TempPathFactory, moto_url: str) -> Iterator[GuideStack]:
    """`digits up` in a fresh HOME (data in ~/.digits), the documented variables set."""
    home = tmp_path_factory.mktemp("home")
    env = {
        **BLOCK_ENV,
        "HOME": str(home),
        "DIGITS_DATA_ROOTS": str(home),
        "DIGITS_INGEST_PROCS": "1",  # two cores, shared
    }
    stack = Stack(home / ".digits", home / "up.log", env=env)
    try:
        wait_for_sync(stack.all_alive, timeout=120, interval=0.5)
        yield GuideStack(home, stack, moto_url)
    finally:
        assert stack.interrupt() == 0, stack.log_path.read_text()


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_guide_page_runs(page: str, guide_stack: GuideStack) -> None:
    cwd = guide_stack.home / "guide" / Path(page).stem
    if cwd.exists():
        shutil.rmtree(cwd)
    cwd.mkdir(parents=True)
    for block in executed(page):
        guide_stack.run(block, cwd)


def test_the_guide_is_complete_and_linked() -> None:
    for page in PAGES:
        assert (GUIDE / page).is_file(), f"docs/guide/{page} is missing"
    index = (GUIDE / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"({page})" in index, f"docs/guide/README.md does not link {page}"
    assert "(docs/guide/README.md)" in (ROOT / "README.md").read_text()
    assert set(RUNNABLE_PAGES) >= set(PAGES[1:]), "every chapter has runnable blocks"
    for page in PAGES:
        text = (GUIDE / page).read_text()
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (GUIDE / target).resolve().is_file(), f"{page} links a missing {target}"


def test_every_substitution_is_used_and_every_block_is_runnable_or_shown() -> None:
    texts = [b.text for p in RUNNABLE_PAGES for b in executed(p)]
    for pattern, _ in SUBSTITUTIONS:
        assert any(re.search(pattern, t) for t in texts), f"no runnable block matches {pattern}"
    for page in RUNNABLE_PAGES:
        for block in executed(page):
            assert block.file or block.lang in ("bash", "python"), block.where()


def test_every_variable_the_guide_names_is_read_by_the_code() -> None:
    sources = "".join(
        p.read_text(errors="replace")
        for folder in ("digits", "gateway", "ingest_service", "train_service", "view_service")
        for p in (ROOT / folder).rglob("*.py")
    )
    for page in PAGES:
        for name in sorted(set(re.findall(r"\bDIGITS_[A-Z0-9_]+\b", (GUIDE / page).read_text()))):
            assert name in sources or name.lower().removeprefix("digits_") in sources, (
                f"docs/guide/{page} names {name}, which no service reads"
            )


def test_the_guide_shows_exactly_the_browser_tests_screenshots() -> None:
    from tests.e2e.test_browser import GUIDE_IMAGES, STEPS

    images = sorted(p.stem for p in GUIDE_IMAGES.glob("*.png"))
    assert images == sorted(STEPS), "refresh with DIGITS_UPDATE_GUIDE_IMAGES=1 and the browser test"
    referenced = set(
        re.findall(r"\(img/([\w-]+)\.png\)", "".join(p.read_text() for p in GUIDE.glob("*.md")))
    )
    assert referenced == set(STEPS)
