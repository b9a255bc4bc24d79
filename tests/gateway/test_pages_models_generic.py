"""Generic models on the model page: the data plugin's inference form, views, rendered results."""

from __future__ import annotations

import io
import json
import re
import sys
import textwrap
from html import unescape

import pytest

from digits import jobs
from digits.extensions.data import get_extensions
from tests.gateway.conftest import add_job

pytestmark = pytest.mark.timeout(180)

PLUGIN = '''
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField

from digits.extensions.data.interface import DataIngestionInterface

TEMPLATE = """<div class="points-infer"><h3>{{ heading }}</h3>
{{ form.point_file.label }} {{ form.point_file() }} {{ form.scale() }}</div>"""


class InferenceForm(FlaskForm):
    point_file = StringField("Point file")
    scale = SelectField("Scale", choices=["one", "two"])


class DataIngestion(DataIngestionInterface):
    @staticmethod
    def get_id():
        return "demo-infer-points"

    @staticmethod
    def get_title():
        return "Points"

    @staticmethod
    def get_category():
        return "Demo"

    @staticmethod
    def get_inference_form():
        return InferenceForm()

    @staticmethod
    def get_inference_template(form):
        return TEMPLATE, {"form": form, "heading": "Points <from> the plugin"}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A data plugin with an inference form, installed as a distribution with an entry point."""
    site = tmp_path / "site"
    (site / "demo_infer_points").mkdir(parents=True)
    (site / "demo_infer_points" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "demo_infer_points-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-infer-points\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[digits.plugins.data]\nclass = demo_infer_points:DataIngestion\n"
    )
    monkeypatch.syspath_prepend(str(site))
    assert "demo-infer-points" in get_extensions(refresh=True)
    yield "demo-infer-points"
    monkeypatch.undo()
    sys.modules.pop("demo_infer_points", None)
    get_extensions(refresh=True)


def generic_model(bus_client, extension: str = "image-segmentation", **kw) -> jobs.Job:
    """A Done generic model on a Done dataset of ``extension``."""
    ds = add_job(bus_client, type="dataset", name="blobs", status=jobs.DONE, extension=extension)
    fields = {"type": "model", "name": "fcn", "status": jobs.DONE, "depends_on": [ds.id]}
    fields |= {"extension": extension, "owner": "admin", "extra": {"snapshots": [1.0, 2.0]}}
    fields |= {"form": {"train_epochs": 2}}
    return add_job(bus_client, **(fields | kw))


def put_info(app, bus_client, job_id: str, task: str) -> None:
    """The model's info.json in the gateway's store, as the trainer writes it."""
    from gateway.context import artifact_store

    with app.app_context():
        store = artifact_store()
    body = json.dumps({"job_id": job_id, "task": task}).encode()
    bus_client.call(store.put(f"models/{job_id}/info.json", body))


def selected_view(html: str) -> str:
    """The view chosen in the page's view menu."""
    menu = re.search(r'<select name="view_extension".*?</select>', html, re.S).group(0)
    return re.search(r'<option value="([^"]+)" selected>', menu).group(1)


def test_generic_model_page_shows_views_config_and_image_input(app, browser, bus_client):
    job = generic_model(bus_client)
    put_info(app, bus_client, job.id, "segmentation")
    response = browser.get(f"/models/{job.id}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" in html
    assert 'id="generic-infer"' in html and 'id="classify-one"' not in html
    action = f'action="/models/{job.id}/infer_generic"'
    assert action in html and f'hx-post="/models/{job.id}/infer_generic"' in html
    assert 'name="csrf_token"' in html.split('id="generic-infer"')[1]
    assert selected_view(html) == "image-segmentation", "a segmentation model's default view"
    assert 'name="opacity"' in html and 'name="colormap"' in html, "the view's own config form"
    assert 'name="image_file"' in html and 'name="plugin_form"' not in html
    assert 'value="val">Test the validation set' in html
    assert 'id="snapshot-generic"' in html and '<option value="2">epoch 2</option>' in html
    # Another task's default is the raw data view; ?view_extension= picks one.
    put_info(app, bus_client, job.id, "regression")
    assert selected_view(browser.get(f"/models/{job.id}").get_data(as_text=True)) == "all-outputs"
    chosen = browser.get(f"/models/{job.id}?view_extension=image-output").get_data(as_text=True)
    assert selected_view(chosen) == "image-output"


def test_classification_model_page_keeps_the_classify_forms(browser, bus_client):
    ds = add_job(bus_client, type="dataset", name="digits", status=jobs.DONE)
    job = add_job(bus_client, type="model", name="lenet", status=jobs.DONE, depends_on=[ds.id])
    html = browser.get(f"/models/{job.id}").get_data(as_text=True)
    assert 'id="classify-one"' in html and 'id="generic-infer"' not in html


def test_view_config_fragment_and_its_fallback(browser, bus_client):
    job = generic_model(bus_client)
    url = f"/models/{job.id}/generic/view_config?view_extension=image-segmentation"
    fragment = browser.get(url, htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and fragment.startswith('<div id="generic-view-config"')
    assert 'name="opacity"' in fragment
    raw = browser.get(url.replace("image-segmentation", "all-outputs"), htmx=True).text
    assert 'data-view="all-outputs"' in raw and 'name="opacity"' not in raw
    unknown = browser.get(url.replace("image-segmentation", "no-such-view"), htmx=True).text
    assert "unknown view extension 'no-such-view'; known ids:" in unescape(unknown)
    whole = browser.get(url)
    assert whole.status_code == 303
    assert whole.headers["Location"].endswith(
        f"/models/{job.id}?view_extension=image-segmentation#generic-infer"
    )


def test_plugin_inference_form_from_its_own_template(browser, bus_client, plugin):
    job = generic_model(bus_client, extension=plugin)
    html = browser.get(f"/models/{job.id}").get_data(as_text=True)
    assert '<div class="points-infer"><h3>Points &lt;from&gt; the plugin</h3>' in html
    assert 'name="point_file"' in html and '<option value="two">two</option>' in html
    assert 'name="plugin_form" value="1"' in html and 'name="image_file"' not in html
    assert '<option value="point_file">point_file</option>' in html, "upload for a text field"
    assert (
        '<option value="scale">' not in html.split('name="upload_field"')[1].split("</select>")[0]
    )


def test_infer_errors_name_the_value(browser, bus_client, plugin):
    job = generic_model(bus_client, extension=plugin)
    url = f"/models/{job.id}/infer_generic"
    bad = browser.post(url, {"source": "val", "limit": "500"}, htmx=True)
    assert bad.status_code == 400 and "limit '500' is out of range 1..64" in unescape(bad.text)
    assert "<html" not in bad.text and 'data-field="limit"' in bad.text
    upload = {"plugin_form": "1", "upload_file": (io.BytesIO(b"1 2"), "p.txt")}
    unnamed = browser.post(url, upload, htmx=True)
    assert unnamed.status_code == 400 and "upload_field: name the form field" in unnamed.text
    whole = browser.post(url, {"source": "everything"})
    assert whole.status_code == 400 and "<html" in whole.text
    assert "source 'everything' is not one of one, val, test" in unescape(whole.text)
    # A good request without a view service running: the fragment says so.
    none = browser.post(url, {"plugin_form": "1", "point_file": "/data/p.txt"}, htmx=True)
    assert none.status_code == 503 and "no view service is running" in none.text


def test_infer_needs_a_login_and_csrf(app, browser, bus_client):
    job = generic_model(bus_client)
    url = f"/models/{job.id}/infer_generic"
    forged = browser.client.post(url, data={"source": "val"})
    assert forged.status_code == 400 and "CSRF" in forged.text
    anonymous = app.test_client()
    config = anonymous.get(f"/models/{job.id}/generic/view_config", headers={"HX-Request": "true"})
    assert config.status_code == 401 and config.headers["HX-Redirect"].startswith("/login")
    assert anonymous.get(f"/models/{job.id}/generic/view_config").status_code == 302


@pytest.mark.timeout(180)
def test_sunnybrook_model_page_renders_the_plugin_form_and_segments_a_dicom(
    nats_server, stack, tmp_path, monkeypatch
):
    """Real services: a Sunnybrook dataset, a tiny FCN, the plugin's form and a DICOM segmented."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from digits.config import Settings
    from gateway.app import create_app
    from gateway.context import bus_of
    from tests.gateway.conftest import ADMIN, ADMIN_PASSWORD, Browser
    from tests.pluginpkg import pip_install
    from tests.plugins.sunnybrook_data import make_sunnybrook
    from tests.waiting import wait_for_sync

    plugins = pip_install("data/sunnybrook", tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(plugins))
    assert "image-sunnybrook" in get_extensions(refresh=True)
    with ThreadPoolExecutor(3) as pool:
        services = ("ingest_service", "train_service", "view_service")
        list(pool.map(lambda m: stack(m, PYTHONPATH=str(plugins)), services))
    images, contours, slices = make_sunnybrook(tmp_path / "sunnybrook")
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    settings = Settings.from_env(
        {
            "DIGITS_NATS_URL": nats_server.url,
            "DIGITS_DATA_DIR": str(tmp_path / "gateway"),
            "DIGITS_STORE_URL": (tmp_path / "store").as_uri(),
            "DIGITS_DATA_ROOTS": str(tmp_path),
        }
    )
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        client = app.test_client()
        browser = Browser(client)
        assert browser.login().status_code == 302
        form = {"dataset_name": "lv", "image_folder": str(images)}
        form |= {"contour_folder": str(contours), "folder_pct_val": 25}
        created = client.post(
            "/datasets/generic/create/image-sunnybrook.json", json=form, headers=ADMIN
        )
        assert created.status_code == 200, created.get_json()
        dataset_id = created.get_json()["id"]

        def finished(job_id: str) -> str | None:
            found = client.get(f"/jobs/{job_id}/status", headers=ADMIN).get_json() or {}
            return found.get("status") if found.get("status") in ("Done", "Error") else None

        assert wait_for_sync(lambda: finished(dataset_id), timeout=60, interval=0.3) == "Done"
        model = {"model_name": "lv-fcn", "dataset": dataset_id, "method": "standard"}
        model |= {"standard_networks": "fcn", "train_epochs": "3", "batch_size": "4"}
        model |= {"solver_type": "ADAM", "learning_rate": "0.005", "lr_policy": "fixed"}
        model |= {"random_seed": "1", "snapshot_interval": "3", "use_mean": "none"}
        response = browser.post("/models/images/generic", model)
        assert response.status_code == 303, response.get_data(as_text=True)
        job_id = response.headers["Location"].rsplit("/", 1)[1]
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            status = browser.get(f"/models/{job_id}/status", htmx=True).text
            if "hx-trigger" not in status:
                break
            time.sleep(0.5)
        assert 'data-status="Done"' in status, status

        html = browser.get(f"/models/{job_id}").get_data(as_text=True)
        assert "<h3>Test a DICOM file</h3>" in html, "the plugin's own inference template"
        assert "<h3>Test a record from the validation set</h3>" in html
        assert ">SC-HF-I-01 image" in html or ">SC-XX-07 image" in html, "its validation records"
        assert selected_view(html) == "image-segmentation"
        target = next(s for s in slices if s.number == 21)
        data = {"plugin_form": "1", "source": "one", "upload_field": "test_image_file"}
        data |= {"upload_file": (io.BytesIO(target.dicom.read_bytes()), target.dicom.name)}
        data |= {"view_extension": "image-segmentation", "opacity": "0.4"}
        result = browser.post(f"/models/{job_id}/infer_generic", data, htmx=True)
        fragment = result.get_data(as_text=True)
        assert result.status_code == 200 and "<html" not in fragment, fragment[:2000]
        assert (
            'data-view="image-segmentation"' in fragment and 'data-task="segmentation"' in fragment
        )
        assert '<img class="overlay" alt="segmentation overlay" src="data:image/png' in fragment
        assert "left ventricle" in fragment and f"<figcaption>{target.dicom.name}<" in fragment
        # A path typed into the plugin's own field works too; a bad one names the value.
        typed = {"plugin_form": "1", "test_image_file": str(target.dicom)}
        assert browser.post(f"/models/{job_id}/infer_generic", typed, htmx=True).status_code == 200
        bad = {"plugin_form": "1", "test_image_file": str(tmp_path / "nope.dcm")}
        refused = browser.post(f"/models/{job_id}/infer_generic", bad, htmx=True)
        assert refused.status_code == 400 and "nope.dcm" in refused.text
        val = browser.post(
            f"/models/{job_id}/infer_generic", {"source": "val", "limit": "2"}, htmx=True
        )
        assert val.status_code == 200 and val.text.count('<figure class="view-output">') == 2
    finally:
        bus_of(app).close()
        get_extensions(refresh=True)
