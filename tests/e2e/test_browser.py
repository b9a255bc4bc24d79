"""The whole flow in a real browser: Debian's Chromium driven by Playwright against `digits up`.

Log in, create a classification dataset from a folder, watch it finish, create a LeNet model on
it, watch the loss graph grow while it trains, classify an uploaded image and read the label.
Each step leaves a screenshot in ``$DIGITS_TEST_ARTIFACTS`` (default ``test-artifacts/``); with
``DIGITS_UPDATE_GUIDE_IMAGES=1`` they also replace the user guide's ``docs/guide/img/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.upstack import Stack
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(420)
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-pw-1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The system Chromium; skip (or fail, where CI requires the browser) without one."""
    found = os.environ.get("DIGITS_CHROMIUM") or shutil.which("chromium")
    if found is None:
        message = "no Chromium on this machine (.ci/run installs Debian's chromium package)"
        if os.environ.get("DIGITS_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where the screenshots go."""
    path = Path(os.environ.get("DIGITS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """An offline synthetic image folder (one sub-folder per class), made by the documented CLI."""
    root = tmp_path_factory.mktemp("data")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.download_data",
            "synthetic",
            str(root / "shapes"),
            "--classes",
            "4",
            "--per-class",
            "60",
        ],
        check=True,
        capture_output=True,
    )
    return root


@pytest.fixture(scope="module")
def up(tmp_path_factory, images):
    """`digits up` with a known admin password and the image folder inside the data roots."""
    tmp = tmp_path_factory.mktemp("up")
    stack = Stack(
        tmp / "digits",
        tmp / "up.log",
        env={"DIGITS_ADMIN_PASSWORD": PASSWORD, "DIGITS_DATA_ROOTS": str(images)},
    )
    try:
        wait_for_sync(stack.all_alive, timeout=90, interval=0.5)
        yield stack
    finally:
        assert stack.interrupt() == 0, stack.log_path.read_text()


@pytest.fixture(scope="module")
def page(up):
    """A Chromium page."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(30_000)
        yield tab
        browser.close()


def first_train_image(images: Path) -> tuple[Path, str]:
    """One image file and its class folder's name."""
    folder = sorted(p for p in (images / "shapes" / "train").iterdir() if p.is_dir())[1]
    return sorted(folder.iterdir())[0], folder.name


STEPS = (
    "01-login",
    "02-new-dataset",
    "03-dataset-done",
    "04-new-model",
    "05-training",
    "06-classify",
    "07-compare",  # taken by test_browser_compare.py
)
GUIDE_IMAGES = ROOT / "docs" / "guide" / "img"


def shot(page, artifacts: Path, name: str) -> None:
    """A full-page screenshot of this step (and the guide's copy, when asked to update it)."""
    assert name in STEPS
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    if os.environ.get("DIGITS_UPDATE_GUIDE_IMAGES"):
        shutil.copyfile(artifacts / f"{name}.png", GUIDE_IMAGES / f"{name}.png")


def status_of(page, selector: str) -> str:
    """The status badge's text in a status region."""
    return page.locator(f"{selector} h2 .status").first.inner_text().strip()


def test_login_dataset_model_graph_and_classify_in_a_browser(page, up, images, artifacts):
    # Log in: the pages send a stranger to the login form first.
    page.goto(up.url + "/")
    assert "/login" in page.url
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    shot(page, artifacts, "01-login")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/(\?.*)?$"))

    # New dataset from the image folder, through the New Dataset menu.
    page.click("#new-dataset-menu summary")
    page.click("#new-dataset-menu >> text=Classification")
    page.wait_for_selector("#dataset-form")
    page.check("#method-folder")
    page.fill("input[name=folder_train]", str(images / "shapes" / "train"))
    page.fill("input[name=resize_width]", "28")
    page.fill("input[name=resize_height]", "28")
    page.fill("input[name=dataset_name]", "shapes")
    shot(page, artifacts, "02-new-dataset")
    page.click("#dataset-form button.primary[type=submit]")
    page.wait_for_url(re.compile(r"/datasets/\d{8}-\d{6}-[0-9a-f]{4}$"))
    dataset_url = page.url

    # The status region polls itself until the job is Done.
    page.wait_for_function(
        "() => { const s = document.querySelector('#dataset-status h2 .status');"
        " return s && ['Done', 'Error', 'Aborted'].includes(s.textContent.trim()); }",
        timeout=120_000,
    )
    assert status_of(page, "#dataset-status") == "Done", page.inner_text("#dataset-status")
    page.wait_for_timeout(300)  # the last swap's images
    shot(page, artifacts, "03-dataset-done")
    dataset_id = dataset_url.rsplit("/", 1)[1]

    # New LeNet model on it, through the New Model menu.
    page.goto(f"{up.url}/models/images/classification/new?dataset={dataset_id}")
    page.wait_for_selector("#model-form")
    page.check("input[name=standard_networks][value=lenet]")
    page.fill("input[name=train_epochs]", "8")
    page.fill("input[name=model_name]", "lenet-shapes")
    shot(page, artifacts, "04-new-model")
    page.click("#model-form button.primary[type=submit]")
    page.wait_for_url(re.compile(r"/models/\d{8}-\d{6}-[0-9a-f]{4}$"))

    # The loss graph grows while the job runs: two readings of its point count, both while Running.
    def points() -> int:
        return int(page.get_attribute("#training-graphs", "data-points") or 0)

    # The status region polls every second, the graphs twice as often: wait for both to agree.
    page.wait_for_function(
        "() => { const s = document.querySelector('#model-status h2 .status');"
        " const done = s && ['Done', 'Error', 'Aborted'].includes(s.textContent.trim());"
        " const points = Number(document.querySelector('#training-graphs').dataset.points || 0);"
        " return done || (points > 0 && s.textContent.trim() === 'Running'); }",
        timeout=180_000,
    )
    first = points()
    assert status_of(page, "#model-status") == "Running" and first > 0, (
        "the graph should have points while the job is still running"
    )
    page.wait_for_function(
        f"() => Number(document.querySelector('#training-graphs').dataset.points || 0) > {first}",
        timeout=120_000,
    )
    assert points() > first
    page.wait_for_function(
        "() => { const s = document.querySelector('#model-status h2 .status');"
        " return s && ['Done', 'Error', 'Aborted'].includes(s.textContent.trim()); }",
        timeout=180_000,
    )
    assert status_of(page, "#model-status") == "Done", page.inner_text("#model-status")
    page.wait_for_timeout(600)  # the graphs' last poll
    assert page.locator("#chart-loss canvas").count() == 1
    shot(page, artifacts, "05-training")

    # Classify One with an uploaded training image: the fragment names its class first.
    image, label = first_train_image(images)
    page.set_input_files("#classify-one input[name=image_file]", str(image))
    page.click("#classify-one button[type=submit]")
    page.wait_for_selector("#classify-one-result table")
    top = page.locator("#classify-one-result tr.top td.label").inner_text().strip()
    shot(page, artifacts, "06-classify")
    assert top == label, page.inner_text("#classify-one-result")


def on_stack_bus(up, change) -> None:
    """Run ``change(store)`` against the stack's job bucket, as a service would."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import nats

    from digits import jobs, subjects

    async def run() -> None:
        nc = await nats.connect(up.nats_url())
        try:
            js = nc.jetstream()
            await change(jobs.JobStore(js, await js.key_value(subjects.KV_JOBS)))
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        pool.submit(asyncio.run, run()).result()


def test_a_notice_heard_while_the_partial_is_asking_is_not_lost(page, up):
    # A live partial replaces itself with its answer: a notice that arrives while the answer is on
    # its way must still make the page ask again (htmx would drop the request it queued).
    from digits import jobs

    page.goto(up.url + "/")
    if "/login" in page.url:  # run alone, this test logs in first
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/(\?.*)?$"))
    job = jobs.Job(
        id=jobs.new_job_id(),
        type="dataset",
        name="asking-twice",
        extension="image-classification",
        owner="admin",
        status=jobs.RUNNING,
        stages=[jobs.Stage(name="train", status=jobs.RUNNING, total=10)],
    )
    on_stack_bus(up, lambda store: store.create(job))
    page.goto(f"{up.url}/datasets/{job.id}")
    page.wait_for_function("() => window.digitsLive === true", timeout=15_000)
    page.wait_for_timeout(1500)  # the first answers are in
    assert status_of(page, "#dataset-status") == "Running"

    held = []  # the answer to the first notice, kept back until the job is Done

    def hold(route) -> None:
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    status_url = f"{up.url}/datasets/{job.id}/status"
    page.route(status_url, hold)
    on_stack_bus(up, lambda store: store.update_stage(job.id, "train", done=5))
    for _ in range(200):  # the route handler runs while Playwright waits
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the stage's notice did not make the partial ask"

    async def finish(store) -> None:
        await store.update_stage(job.id, "train", status=jobs.DONE, done=10)
        await store.set_status(job.id, jobs.DONE)

    on_stack_bus(up, finish)
    page.wait_for_timeout(500)  # the Done notice arrives while the first answer is held
    route, answer = held[0]
    route.fulfill(response=answer)
    # Well before the 10 s safety poll: the notice heard meanwhile asked again.
    page.wait_for_function(
        "() => { const s = document.querySelector('#dataset-status h2 .status');"
        " return s && s.textContent.trim() === 'Done'; }",
        timeout=4_000,
    )
