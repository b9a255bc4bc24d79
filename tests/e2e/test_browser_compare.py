"""Two real training runs compared in a real browser: chosen on the home page, drawn by uPlot.

`digits up` trains two LeNets (different solvers) on a synthetic image folder; the browser checks
both on the home page's Models tab, presses Compare and finds each chart drawn with both runs'
colours. The page leaves ``07-compare.png`` in ``$DIGITS_TEST_ARTIFACTS/browser``.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
import urllib.request

import pytest

from tests.e2e.test_browser import PASSWORD, artifacts, images, page, shot, up
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(420)
__all__ = ["artifacts", "images", "page", "up"]  # the fixtures, shared with test_browser
AUTH = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
RUNS = {  # name -> the options that differ
    "lenet-sgd": {"solver_type": "SGD", "learning_rate": "0.01"},
    "lenet-adam": {"solver_type": "ADAM", "learning_rate": "0.002"},
}
# The pixels of a colour on a chart's canvas (uPlot draws each series in its stroke colour).
COUNT_COLOUR = """([id, hex]) => {
  const canvas = document.querySelector('#' + id + ' canvas');
  const rgb = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] > 200 && rgb.every((c, k) => Math.abs(pixels[i + k] - c) < 40)) { n++; }
  }
  return n;
}"""


def api(up, path: str, form: dict[str, str] | None = None) -> dict:
    """A JSON API call with HTTP Basic, as a script makes it."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(up.url + path, data=data, headers={"Authorization": AUTH})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def finished(up, path: str) -> str | None:
    """The job's status once it has ended."""
    status = api(up, path)["status"]
    return status if status in ("Done", "Error", "Aborted") else None


def test_compare_two_trained_runs_in_a_browser(page, up, images, artifacts):
    form = {"dataset_name": "shapes-compare", "method": "folder", "folder_pct_val": "25"}
    form |= {"folder_train": str(images / "shapes" / "train"), "resize_channels": "1"}
    form |= {"resize_width": "28", "resize_height": "28"}
    dataset_id = api(up, "/datasets/images/classification.json", form)["id"]
    assert wait_for_sync(lambda: finished(up, f"/datasets/{dataset_id}.json"), 120, 0.5) == "Done"
    ids = {}
    for name, options in RUNS.items():
        model = {"model_name": name, "dataset": dataset_id, "method": "standard"}
        model |= {"standard_networks": "lenet", "train_epochs": "3", "batch_size": "16"}
        model |= {"lr_policy": "fixed", "random_seed": "3", **options}
        ids[name] = api(up, "/models/images/classification.json", model)["id"]
    for job_id in ids.values():
        assert wait_for_sync(lambda j=job_id: finished(up, f"/models/{j}.json"), 300, 1) == "Done"

    # Check both on the home page's Models tab and press Compare.
    page.goto(up.url + "/?tab=models")
    if "/login" in page.url:
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/(\?.*)?$"))
        page.goto(up.url + "/?tab=models")
    for job_id in ids.values():
        page.check(f"#bulk-form input[name=job_id][value='{job_id}']")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/models/compare\?job_id="))
    asked = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert set(asked) == {"job_id"} and sorted(asked["job_id"]) == sorted(ids.values())
    page.wait_for_function("() => window.digitsCompare && window.digitsCompare.loss")

    runs = page.locator("#compare-runs tbody tr")
    assert runs.count() == 2 and not page.locator("#compare-error").count()
    legend = page.locator("#compare-loss .u-legend").text_content()
    assert "lenet-sgd (val)" in legend and "lenet-adam (train)" in legend
    options = page.locator("#compare-options").text_content()
    assert "solver_type" in options and "ADAM" in options and "SGD" in options
    page.wait_for_timeout(300)  # uPlot draws on the next animation frame
    palette = json.loads(page.inner_text("#compare-data"))["palette"]
    for chart in ("compare-loss", "compare-accuracy", "compare-lr"):
        assert page.get_attribute(f"#{chart}", "data-runs") == "2", chart
        drawn = [page.evaluate(COUNT_COLOUR, [chart, colour]) for colour in palette[:2]]
        assert all(n > 50 for n in drawn), f"{chart}: pixels of each run's colour {drawn}"
    shot(page, artifacts, "07-compare")
