"""Job actions as forms: abort, delete with DIGITS's refusal, edit; owners and CSRF."""

from __future__ import annotations

import threading
import time

import pytest

from digits import commands, events, jobs, subjects
from tests.gateway.conftest import Browser, add_job, stored_events


@pytest.fixture(autouse=True)
def no_wait(app):
    """Without a service carrying out commands, actions do not wait for the records."""
    app.config["PAGE_COMMAND_WAIT_S"] = 0


def test_abort_with_htmx_answers_the_actions_region(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="running", owner="admin", status="R")
    response = browser.post(f"/jobs/{job.id}/actions/abort", htmx=True)
    body = response.get_data(as_text=True)
    assert response.status_code == 202 and "<html" not in body
    assert body.lstrip().startswith('<section id="job-actions"') and "Abort of dataset" in body
    [abort] = stored_events(bus_client, subjects.CMD_JOB_ABORT)
    assert abort.job_id == job.id and abort.reason == "aborted by admin"


def test_abort_without_javascript_redirects_to_the_job_with_a_message(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="over", owner="admin", status=jobs.DONE)
    response = browser.post(f"/jobs/{job.id}/actions/abort")
    assert response.status_code == 303 and response.headers["Location"] == f"/datasets/{job.id}"
    page = browser.get(f"/datasets/{job.id}").get_data(as_text=True)
    assert "Dataset &#39;over&#39; is already Done." in page
    refused = browser.post(f"/jobs/{job.id}/actions/abort", htmx=True)
    assert refused.status_code == 409 and "already Done" in refused.text
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_delete_is_refused_while_a_model_uses_the_dataset(browser, bus_client):
    dataset = add_job(bus_client, type="dataset", name="used", owner="admin", status=jobs.DONE)
    model = add_job(bus_client, type="model", name="lenet", depends_on=[dataset.id])
    refused = browser.post(f"/jobs/{dataset.id}/actions/delete", htmx=True)
    assert refused.status_code == 409
    assert "Cannot delete dataset" in refused.text and model.id in refused.text
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []
    gone = browser.post(f"/jobs/{model.id}/actions/delete", htmx=True)
    assert gone.status_code == 200 and gone.headers["HX-Redirect"] == "/?tab=models"
    [delete] = stored_events(bus_client, subjects.CMD_JOB_DELETE)
    assert delete.job_id == model.id


def test_delete_waits_for_the_record_to_go(app, browser, bus_client):
    """With a handler carrying out the command (as a service does), the list no longer shows it."""
    app.config["PAGE_COMMAND_WAIT_S"] = 10
    job = add_job(bus_client, type="dataset", name="doomed", owner="admin", status=jobs.DONE)

    def carry_out() -> None:
        time.sleep(0.3)
        cmd = events.JobDelete(job_id=job.id)
        bus_client.call(commands.delete(bus_client.jobs, cmd))

    worker = threading.Thread(target=carry_out)
    worker.start()
    response = browser.post(f"/jobs/{job.id}/actions/delete")
    worker.join()
    assert response.status_code == 303 and response.headers["Location"] == "/?tab=datasets"
    home = browser.get("/").get_data(as_text=True)
    assert "Deleted dataset &#39;doomed&#39;." in home and f'value="{job.id}"' not in home


def test_only_the_owner_or_an_admin_may_abort_delete_or_edit(client, bus_client, accounts):
    accounts.create_user("alice", "pw-alice-1")
    accounts.create_user("bob", "pw-bob-1")
    job = add_job(bus_client, type="dataset", name="alices", owner="alice", status="R")
    bob = Browser(client)
    bob.login("bob", "pw-bob-1")
    for action in ("abort", "delete"):
        refused = bob.post(f"/jobs/{job.id}/actions/{action}", htmx=True)
        assert refused.status_code == 403 and f"You may not {action}" in refused.text
    edit = bob.post(f"/jobs/{job.id}/edit", {"job_name": "mine now"}, htmx=True)
    assert edit.status_code == 403 and "only its owner (alice)" in edit.text
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []
    client.post("/logout", data={"csrf_token": bob.csrf})
    alice = Browser(client)
    alice.login("alice", "pw-alice-1")
    assert alice.post(f"/jobs/{job.id}/actions/abort", htmx=True).status_code == 202


def test_edit_form_page_and_fragment(browser, bus_client):
    job = add_job(
        bus_client, type="dataset", name="old name", group="g1", notes="first", owner="admin"
    )
    page = browser.get(f"/jobs/{job.id}/edit").get_data(as_text=True)
    assert "<html" in page and 'value="old name"' in page and ">first</textarea>" in page
    fragment = browser.get(f"/jobs/{job.id}/edit", htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and fragment.lstrip().startswith('<section id="job-actions"')
    assert 'action="/jobs/' in fragment and 'name="csrf_token"' in fragment


def test_edit_publishes_only_the_changed_fields(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="old", group="g1", notes="", owner="admin")
    data = {"job_name": "new", "group_name": "g1", "notes": "better notes"}
    response = browser.post(f"/jobs/{job.id}/edit", data)
    assert response.status_code == 303 and response.headers["Location"] == f"/datasets/{job.id}"
    [edit] = stored_events(bus_client, subjects.CMD_JOB_EDIT)
    assert (edit.name, edit.group, edit.notes) == ("new", None, "better notes")
    redirected = browser.post(f"/jobs/{job.id}/edit", {**data, "job_name": "newer"}, htmx=True)
    assert redirected.headers["HX-Redirect"] == f"/datasets/{job.id}"


def test_edit_errors_rerender_the_form_naming_the_value(browser, bus_client):
    job = add_job(bus_client, type="model", name="m", owner="admin")
    response = browser.post(f"/jobs/{job.id}/edit", {"job_name": "   ", "notes": "kept"})
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "job_name &#39;   &#39; is empty" in body and ">kept</textarea>" in body
    long = browser.post(f"/jobs/{job.id}/edit", {"job_name": "x", "group_name": "g" * 201})
    assert long.status_code == 400 and "group_name is 201 characters" in long.text
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_unknown_jobs_are_404(browser):
    for url in ("/jobs/nope/actions/abort", "/jobs/nope/actions/delete", "/jobs/nope/edit"):
        assert browser.post(url).status_code == 404, url
    assert browser.get("/jobs/nope/edit").status_code == 404


def test_actions_need_the_csrf_token(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="x", owner="admin", status="R")
    assert browser.client.post(f"/jobs/{job.id}/actions/abort").status_code == 400
    assert browser.client.post(f"/jobs/{job.id}/actions/delete").status_code == 400
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_the_json_api_routes_still_answer(client, bus_client):
    """The pages' action paths do not shadow the API's /jobs/<id>/abort and DELETE /jobs/<id>."""
    from tests.gateway.conftest import ADMIN

    job = add_job(bus_client, type="dataset", name="api", owner="admin", status="R")
    assert client.post(f"/jobs/{job.id}/abort", headers=ADMIN).get_json()["aborting"] is True
    assert client.delete(f"/jobs/{job.id}", headers=ADMIN).get_json()["deleting"] is True
