"""A data plugin's own form on the generic dataset pages and the JSON API (really installed)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from digits import subjects
from digits.extensions.data import get_extensions
from tests.gateway.conftest import ADMIN, add_job, stored_events

PLUGIN = '''
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, StringField, validators

from digits.extensions.data.interface import DataIngestionInterface

TEMPLATE = """{% from "helper.html" import mark_errors %}
<div class="form-group{{ mark_errors([form.point_count]) }}">
  {{ form.point_count.label }} {{ form.point_count(class_="form-control") }}
</div>
<div class="form-group{{ mark_errors([form.source]) }}">
  {{ form.source.label }} {{ form.source() }}
</div>
<div>{{ form.token.label }} {{ form.token() }}</div>
<p>{{ hint }}</p>
"""


class DatasetForm(FlaskForm):
    point_count = IntegerField("Points", validators=[validators.NumberRange(min=1, max=100)])
    source = StringField("Source", validators=[validators.DataRequired()])
    token = PasswordField("Token")


class DataIngestion(DataIngestionInterface):
    @staticmethod
    def get_id():
        return "demo-points"

    @staticmethod
    def get_title():
        return "Points"

    @staticmethod
    def get_category():
        return "Demo"

    @staticmethod
    def get_dataset_form():
        return DatasetForm()

    @staticmethod
    def get_dataset_template(form):
        return TEMPLATE, {"form": form, "hint": "Points from the plugin"}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin installed as a distribution with a digits.plugins.data entry point."""
    site = tmp_path / "site"
    (site / "demo_points").mkdir(parents=True)
    (site / "demo_points" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "demo_points-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-points\nVersion: 0.1\n")
    entry_points = "[digits.plugins.data]\nclass = demo_points:DataIngestion\n"
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(site))
    assert "demo-points" in get_extensions(refresh=True)
    yield "demo-points"
    monkeypatch.undo()
    sys.modules.pop("demo_points", None)
    get_extensions(refresh=True)


def test_the_menu_and_the_plugin_form_page_and_fragment(browser, plugin):
    page = browser.get("/").get_data(as_text=True)
    assert 'href="/datasets/generic/new/demo-points">Points<' in page
    new = browser.get("/datasets/generic/new/demo-points").get_data(as_text=True)
    assert "<html" in new and "New Points Dataset" in new and "Points from the plugin" in new
    assert 'name="point_count"' in new and 'name="dataset_name"' in new
    assert 'action="/datasets/generic/create/demo-points"' in new and 'name="csrf_token"' in new
    fragment = browser.get("/datasets/generic/new/demo-points", htmx=True).text
    assert "<html" not in fragment and fragment.lstrip().startswith('<form id="dataset-form"')
    assert browser.get("/datasets/generic/new/no-such-plugin").status_code == 404


def test_plugin_form_errors_rerender_with_the_values(browser, bus_client, plugin):
    data = {"dataset_name": "", "point_count": "500", "source": "", "token": "tok-secret"}
    response = browser.post("/datasets/generic/create/demo-points", data)
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "dataset_name is required" in body and "point_count: Number must be between" in body
    assert "(got 500)" in body and "source: This field is required." in body
    assert 'value="500"' in body and "has-error" in body and "tok-secret" not in body
    assert stored_events(bus_client, subjects.CMD_DATASET_CREATE) == []


def test_plugin_form_publishes_dataset_create_with_its_data(browser, bus_client, plugin):
    data = {"dataset_name": "pts", "group_name": "g", "point_count": "7", "source": "/d"}
    response = browser.post("/datasets/generic/create/demo-points", {**data, "token": "tok"})
    assert response.status_code == 303
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.extension == "demo-points" and command.name == "pts" and command.group == "g"
    assert command.form["point_count"] == 7 and command.form["source"] == "/d"
    assert "token" not in command.form and command.form["secret_ref"].startswith("secret:")
    job = add_job(
        bus_client,
        id=command.job_id,
        type="dataset",
        name="pts",
        extension="demo-points",
        owner="admin",
        form=command.form,
    )
    clone = browser.get(f"/datasets/{job.id}/clone").get_data(as_text=True)
    assert "New Points Dataset" in clone and 'value="7"' in clone and 'value="pts"' in clone


def test_generic_create_json_api(client, bus_client, plugin):
    url = "/datasets/generic/create/demo-points.json"
    bad = client.post(url, data={"point_count": "0"}, headers=ADMIN)
    assert bad.status_code == 400
    assert set(bad.get_json()["errors"]) == {"dataset_name", "point_count", "source"}
    body = {"dataset_name": "api-pts", "point_count": 3, "source": "/x"}
    good = client.post(url, json=body, headers=ADMIN)
    assert good.status_code == 200, good.get_json()
    [command] = stored_events(bus_client, subjects.CMD_DATASET_CREATE)
    assert command.job_id == good.get_json()["id"] and command.form["point_count"] == 3
    unknown = client.post("/datasets/generic/create/nope.json", json=body, headers=ADMIN)
    assert unknown.status_code == 404 and "'nope'" in unknown.get_json()["error"]
    assert client.post(url, json=body).status_code == 401
