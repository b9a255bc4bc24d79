"""The home page: tabs, groups, running jobs that poll while they run, bulk actions."""

from __future__ import annotations

import pytest

from digits import events, jobs, subjects
from tests.gateway.conftest import Browser, add_job, stored_events


@pytest.fixture(autouse=True)
def no_wait(app):
    """No service carries out commands here: actions do not wait for the records to change."""
    app.config["PAGE_COMMAND_WAIT_S"] = 0


def test_home_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    partial = client.get("/", headers={"HX-Request": "true"})
    assert partial.status_code == 401 and "/login" in partial.headers["HX-Redirect"]


def test_full_page_lists_datasets_by_group_and_the_fragment_alone_with_htmx(browser, bus_client):
    add_job(bus_client, type="dataset", name="mnist-train", group="digits", status=jobs.DONE)
    add_job(bus_client, type="dataset", name="loose-one", status=jobs.DONE)
    add_job(bus_client, type="model", name="a-model", group="digits")
    page = browser.get("/").get_data(as_text=True)
    assert "<html" in page and 'id="new-dataset-menu"' in page
    assert 'id="running-jobs"' in page and 'id="home-tab"' in page
    assert "mnist-train" in page and "loose-one" in page and "a-model" not in page
    # Ungrouped first, then the groups, each a collapsible section with its count.
    assert page.index("No group") < page.index("loose-one") < page.index("digits <span")
    assert page.index("digits <span") < page.index("mnist-train")
    fragment = browser.get("/", htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and fragment.lstrip().startswith('<section id="home-tab"')
    assert "mnist-train" in fragment and 'name="csrf_token"' in fragment


def test_models_tab_shows_dataset_and_progress(browser, bus_client):
    dataset = add_job(bus_client, type="dataset", name="cats", status=jobs.DONE)
    add_job(bus_client, type="model", name="lenet-cats", depends_on=[dataset.id], status="R")
    fragment = browser.get("/?tab=models", htmx=True).get_data(as_text=True)
    assert "lenet-cats" in fragment and f'href="/datasets/{dataset.id}">cats<' in fragment
    assert "<progress" in fragment and "Models (1)" in fragment and "Datasets (1)" in fragment
    assert 'class="active">Models' in fragment.replace("\n", "").replace("  ", "")


def test_running_jobs_poll_while_they_run_and_stop_after(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="ingesting", status=jobs.RUNNING)
    bus_client.call(bus_client.jobs.update_stage(job.id, "Create DB (train)", progress=0.5))
    page = browser.get("/").get_data(as_text=True)
    assert f'hx-get="/running?shown={job.id}"' in page and "load[!window.digitsLive] delay" in page
    polled = browser.get(f"/running?shown={job.id}", htmx=True)
    assert "HX-Trigger" not in polled.headers  # the same jobs run: the list stays
    body = polled.get_data(as_text=True)
    assert "<html" not in body and 'value="50"' in body and "hx-trigger" in body
    bus_client.call(bus_client.jobs.set_status(job.id, jobs.DONE))
    ended = browser.get(f"/running?shown={job.id}", htmx=True)
    assert ended.headers["HX-Trigger"] == "digits-jobs-changed"  # the tab reloads itself
    ended_html = ended.get_data(as_text=True)  # no more polling; a server-sent notice still asks
    assert "delay:" not in ended_html and 'hx-trigger="sse:job"' in ended_html
    assert "No job is running" in ended.text
    full = browser.get("/running").get_data(as_text=True)
    assert "<html" in full and "No job is running" in full


def test_bulk_delete_refuses_a_used_dataset_and_deletes_the_rest(browser, bus_client):
    used = add_job(bus_client, type="dataset", name="used", owner="admin", status=jobs.DONE)
    model = add_job(bus_client, type="model", name="trained", depends_on=[used.id])
    spare = add_job(bus_client, type="dataset", name="spare", owner="admin", status=jobs.DONE)
    data = {"action": "delete", "tab": "datasets", "job_id": [used.id, spare.id]}
    fragment = browser.post("/jobs/bulk", data, htmx=True).get_data(as_text=True)
    assert "<html" not in fragment and 'id="home-tab"' in fragment
    refusal = f"Cannot delete dataset 'used': it is used by model 'trained' ({model.id})"
    assert refusal.replace("'", "&#39;") in fragment
    assert "Deletion of dataset &#39;spare&#39; requested" in fragment
    found = stored_events(bus_client, subjects.CMD_JOB_DELETE)
    assert [(type(e), e.job_id) for e in found] == [(events.JobDelete, spare.id)]


def test_bulk_without_javascript_redirects_with_messages(browser, bus_client):
    running = add_job(bus_client, type="dataset", name="busy", owner="admin", status="R")
    done = add_job(bus_client, type="dataset", name="over", owner="admin", status=jobs.DONE)
    data = {"action": "abort", "tab": "datasets", "job_id": [running.id, done.id]}
    response = browser.post("/jobs/bulk", data)
    assert response.status_code == 303 and response.headers["Location"] == "/?tab=datasets"
    page = browser.get("/").get_data(as_text=True)
    assert "Dataset &#39;over&#39; is already Done." in page
    [abort] = stored_events(bus_client, subjects.CMD_JOB_ABORT)
    assert abort.job_id == running.id and abort.reason == "aborted by admin"


def test_bulk_set_group_and_bad_requests(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="regroup-me", owner="admin")
    data = {"action": "group", "group_name": "new-group", "job_id": [job.id]}
    assert browser.post("/jobs/bulk", data, htmx=True).status_code == 200
    [edit] = stored_events(bus_client, subjects.CMD_JOB_EDIT)
    assert edit.job_id == job.id and edit.group == "new-group" and edit.name is None
    nothing = browser.post("/jobs/bulk", {"action": "delete"}, htmx=True)
    assert nothing.status_code == 400 and "Check at least one job to delete" in nothing.text
    wrong = browser.post("/jobs/bulk", {"action": "explode", "job_id": [job.id]}, htmx=True)
    assert wrong.status_code == 400 and "&#39;explode&#39; is not one of" in wrong.text
    unknown = browser.post("/jobs/bulk", {"action": "abort", "job_id": ["nope"]}, htmx=True)
    assert "No job with id &#39;nope&#39;" in unknown.text


def test_bulk_actions_on_another_users_jobs_are_refused(client, bus_client, accounts):
    accounts.create_user("bob", "pw-bob-1")
    job = add_job(bus_client, type="dataset", name="admins", owner="admin", status="R")
    bob = Browser(client)
    assert bob.login("bob", "pw-bob-1").status_code == 302
    data = {"action": "delete", "job_id": [job.id]}
    fragment = bob.post("/jobs/bulk", data, htmx=True).get_data(as_text=True)
    assert "You may not delete dataset &#39;admins&#39;" in fragment
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []


def test_bulk_posts_need_the_csrf_token(browser, bus_client):
    job = add_job(bus_client, type="dataset", name="x", owner="admin")
    response = browser.client.post("/jobs/bulk", data={"action": "delete", "job_id": job.id})
    assert response.status_code == 400
    assert stored_events(bus_client, f"{subjects.CMD}.job.>") == []
