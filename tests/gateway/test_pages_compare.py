"""The compare page and its JSON on a real nats-server: models' histories side by side."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest

from digits import events, jobs
from gateway import model_progress
from tests.gateway.conftest import ADMIN, Browser, add_job
from tests.gateway.test_pages_models import dataset, publish

pytestmark = pytest.mark.timeout(120)


def run(bus_client, name: str, form: dict, **kw) -> jobs.Job:
    """A finished model job record on a fresh dataset."""
    ds = dataset(bus_client)
    fields = {"type": "model", "name": name, "status": jobs.DONE, "depends_on": [ds.id]}
    fields |= {"form": form, "owner": "admin"}
    return add_job(bus_client, **(fields | kw))


def train(bus_client, job_id: str, epoch: float, loss: float, accuracy: float, lr: float) -> None:
    """A train-phase progress event, as the trainer publishes it."""
    metrics = {"loss": loss, "accuracy": accuracy}
    event = events.TrainProgress(job_id=job_id, epoch=epoch, metrics=metrics, learning_rate=lr)
    publish(bus_client, event)


def val(bus_client, job_id: str, epoch: float, loss: float, accuracy: float) -> None:
    """A validation progress event."""
    metrics = {"val_loss": loss, "val_accuracy": accuracy}
    publish(
        bus_client, events.TrainProgress(job_id=job_id, phase="val", epoch=epoch, metrics=metrics)
    )


FORM_A = {"train_epochs": 2, "learning_rate": 0.01, "solver_type": "SGD", "batch_size": 16}
FORM_B = {"train_epochs": 2, "learning_rate": 0.05, "solver_type": "ADAM", "batch_size": 16}


@pytest.fixture
def two_runs(bus_client) -> tuple[jobs.Job, jobs.Job]:
    """Two finished runs with two epochs of history each: b is better in epoch 1, a at the end."""
    a = run(bus_client, "lenet-sgd", FORM_A)
    b = run(bus_client, "lenet-adam", FORM_B | {"aug_flip": "fliplr"})
    train(bus_client, a.id, 0.5, 2.0, 0.3, 0.01)
    train(bus_client, b.id, 0.5, 1.5, 0.5, 0.05)
    train(bus_client, a.id, 1.0, 1.6, 0.4, 0.01)
    val(bus_client, a.id, 1.0, 1.4, 0.55)
    val(bus_client, b.id, 1.0, 0.9, 0.8)
    train(bus_client, a.id, 2.0, 0.7, 0.8, 0.001)
    val(bus_client, a.id, 2.0, 0.6, 0.9)
    train(bus_client, b.id, 2.0, 1.1, 0.6, 0.005)
    val(bus_client, b.id, 2.0, 1.0, 0.7)
    return a, b


def compare_url(*ids: str, json_route: bool = False) -> str:
    """The compare URL for ``ids`` (repeated job_id)."""
    path = "/models/compare.json" if json_route else "/models/compare"
    return f"{path}?{urlencode([('job_id', i) for i in ids])}"


def test_json_figures_match_the_histories(client, bus_client, accounts, two_runs):
    a, b = two_runs
    accounts.create_user("carol", "pw-carol-1")  # not the owner: describing a job is open
    carol = Browser(client)
    assert carol.login("carol", "pw-carol-1").status_code == 302
    response = carol.get(compare_url(a.id, b.id, json_route=True))
    assert response.status_code == 200, response.text
    body = response.get_json()
    first, second = body["runs"]
    assert (first["job_id"], first["name"], second["name"]) == (a.id, "lenet-sgd", "lenet-adam")
    assert first["status"] == "Done" and first["points"] == 5 and second["points"] == 4
    assert first["curves"] == {
        "loss": {"train": [[0.5, 2.0], [1.0, 1.6], [2.0, 0.7]], "val": [[1.0, 1.4], [2.0, 0.6]]},
        "accuracy": {
            "train": [[0.5, 0.3], [1.0, 0.4], [2.0, 0.8]],
            "val": [[1.0, 0.55], [2.0, 0.9]],
        },
        "learning_rate": [[0.5, 0.01], [1.0, 0.01], [2.0, 0.001]],
    }
    assert second["curves"]["loss"]["val"] == [[1.0, 0.9], [2.0, 1.0]]
    assert first["best"] == {
        "val_accuracy": {"value": 0.9, "epoch": 2.0},
        "val_loss": {"value": 0.6, "epoch": 2.0},
    }
    assert second["best"] == {
        "val_accuracy": {"value": 0.8, "epoch": 1.0},
        "val_loss": {"value": 0.9, "epoch": 1.0},
    }
    assert second["final"] == {
        "epoch": 2.0,
        "loss": 1.1,
        "accuracy": 0.6,
        "val_loss": 1.0,
        "val_accuracy": 0.7,
        "learning_rate": 0.005,
    }
    differ = body["differing_options"]
    assert set(differ) == {"learning_rate", "solver_type", "aug_flip", "dataset"}
    assert differ["learning_rate"] == {a.id: 0.01, b.id: 0.05}
    assert differ["aug_flip"] == {a.id: None, b.id: "fliplr"}
    assert differ["dataset"] == {a.id: a.depends_on[0], b.id: b.depends_on[0]}
    # Scripts call it with HTTP Basic; the order of the answer is the order asked.
    again = client.get(compare_url(b.id, a.id, json_route=True), headers=ADMIN).get_json()
    assert [r["job_id"] for r in again["runs"]] == [b.id, a.id]


def test_a_run_without_history_and_a_pending_one_compare_empty(browser, bus_client, two_runs):
    a, _ = two_runs
    quiet = run(bus_client, "not-started", FORM_A, status=jobs.WAITING)
    body = browser.get(compare_url(a.id, quiet.id, json_route=True)).get_json()
    empty = body["runs"][1]
    assert empty["points"] == 0 and empty["curves"]["loss"] == {"train": [], "val": []}
    assert empty["best"] == {"val_accuracy": None, "val_loss": None}
    assert empty["final"]["epoch"] is None and body["differing_options"].keys() == {"dataset"}


def bad_inputs(bus_client) -> list[tuple[list[str], str]]:
    """(job ids, what the error must say) for each kind of bad choice."""
    a = run(bus_client, "a", FORM_A)
    b = run(bus_client, "b", FORM_B)
    ds = dataset(bus_client)
    many = [run(bus_client, f"m{i}", FORM_A).id for i in range(9)]
    return [
        ([], "compare takes 2 to 8 models (job_id), got 0"),
        ([a.id], f"compare takes 2 to 8 models (job_id), got 1: {a.id}"),
        (many, "compare takes 2 to 8 models (job_id), got 9"),
        ([a.id, "20990101-000000-beef"], "job_id '20990101-000000-beef': no model with that id"),
        ([a.id, ds.id], f"job_id '{ds.id}' is a dataset, not a model"),
        ([a.id, b.id, a.id], f"job_id '{a.id}' is given twice"),
    ]


def test_bad_choices_are_400_naming_the_bad_value(browser, bus_client):
    for ids, message in bad_inputs(bus_client):
        response = browser.get(compare_url(*ids, json_route=True))
        assert response.status_code == 400, (ids, response.text)
        assert message in response.get_json()["error"], ids
        page = browser.get(compare_url(*ids))
        assert page.status_code == 400 and 'id="compare-error"' in page.text
        assert message.replace("'", "&#39;") in page.text, ids
        # The page offers the form again, with the ids asked for, to fix the choice.
        for job_id in set(ids):
            assert f'name="job_id" value="{job_id}" checked' in page.text
        assert 'id="compare-graphs"' not in page.text


def test_page_renders_both_runs_and_the_options_that_differ(browser, two_runs):
    a, b = two_runs
    page = browser.get(compare_url(a.id, b.id))
    html = page.text
    assert page.status_code == 200 and "<html" in html
    assert "lenet-sgd" in html and "lenet-adam" in html
    assert f'href="/models/{a.id}"' in html and f'href="/models/{b.id}"' in html
    options = re.search(r'<section class="card" id="compare-options">.*?</section>', html, re.S)
    assert options, html
    rows = dict(
        re.findall(r'<tr data-option="(\w+)"><th scope="row">\w+</th>(.*?)</tr>', html, re.S)
    )
    assert set(rows) == {"aug_flip", "dataset", "learning_rate", "solver_type"}
    assert re.search(r"<td>SGD</td>\s*<td>ADAM</td>", rows["solver_type"])
    assert re.search(r"<td>0.01</td>\s*<td>0.05</td>", rows["learning_rate"])
    assert "train_epochs" not in rows and "batch_size" not in rows
    best = re.findall(r'<td class="best-accuracy">([^<]+) <small', html)
    assert best == ["0.9", "0.8"]
    # The charts' data is embedded, and the chart library is the vendored one (no CDN).
    embedded = re.search(r'<script type="application/json" id="compare-data">(.*?)</script>', html)
    data = json.loads(embedded.group(1))
    assert [r["name"] for r in data["runs"]] == ["lenet-sgd", "lenet-adam"]
    assert "/static/vendor/uPlot-1.6.32.iife.min.js" in html and "https://" not in html


def test_home_models_tab_has_a_compare_button_that_lands_on_the_plain_url(browser, two_runs):
    a, b = two_runs
    models = browser.get("/?tab=models").text
    assert 'formaction="/models/compare" formmethod="get"' in models
    assert f'name="job_id" value="{a.id}"' in models
    assert 'id="compare-button"' not in browser.get("/?tab=datasets").text
    # The bulk form sends all its fields: the page answers with the plain URL of the ids.
    sent = [("csrf_token", browser.csrf), ("tab", "models"), ("page", "1"), ("group_name", "")]
    query = urlencode([*sent, ("job_id", a.id), ("job_id", b.id)])
    plain = compare_url(a.id, b.id)
    response = browser.get(f"/models/compare?{query}")
    assert response.status_code == 303 and response.headers["Location"] == plain
    hx = browser.get(f"/models/compare?{query}", htmx=True)
    assert hx.status_code == 204 and hx.headers["HX-Redirect"] == plain
    blank = browser.get(compare_url(a.id, b.id, ""))  # the page's own "another id" box
    assert blank.status_code == 303 and blank.headers["Location"] == plain
    assert browser.get(plain).status_code == 200


def test_compare_needs_a_login(client, two_runs):
    a, b = two_runs
    page = client.get(compare_url(a.id, b.id))
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert client.get(compare_url(a.id, b.id, json_route=True)).status_code == 401


def test_read_all_pages_through_the_whole_history(bus_client, two_runs):
    a, _ = two_runs
    js = bus_client.nc.jetstream()
    whole = bus_client.call(model_progress.read_all(js, a.id, page=2))
    assert [(p["phase"], p["epoch"]) for p in whole] == [
        ("train", 0.5),
        ("train", 1.0),
        ("val", 1.0),
        ("train", 2.0),
        ("val", 2.0),
    ]
