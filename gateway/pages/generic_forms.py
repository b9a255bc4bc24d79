"""The forms of a generic model's page: the data plugin's inference form, the views, their configs.

The inference form and the view's config form are the plugins' own Flask-WTF forms and Jinja
templates, rendered inside the model page (``models.show``) and its partials (``models_generic``).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from flask import current_app, render_template_string
from markupsafe import Markup

from digits import events
from digits.extensions import data as data_extensions
from digits.extensions import view as view_extensions
from digits.inference import DEFAULT_VIEWS, MAX_INPUTS, RAW_VIEW
from digits.jobs import Job, JobNotFound
from digits.models.layout import INFO, model_key
from digits.store import StoreError
from gateway.context import artifact_store, bus_client, job_store

CLASSIFICATION = events.CLASSIFICATION


def is_generic(job: Job, dataset: Job | None) -> bool:
    """Whether a model (or its dataset) is of an extension other than image classification."""
    if (job.extension or CLASSIFICATION) != CLASSIFICATION:
        return True
    return dataset is not None and (dataset.extension or CLASSIFICATION) != CLASSIFICATION


def dataset_of(job: Job) -> Job | None:
    """The model's dataset job, None when it is gone."""
    if not job.depends_on:
        return None
    try:
        return bus_client().call(job_store().get(job.depends_on[0]))
    except JobNotFound:
        return None


def task_of(job: Job) -> str:
    """The model's task, from its info.json in the store (or its form while it trains)."""
    store = artifact_store()
    try:
        raw = bus_client().call(store.get(model_key(job.id, INFO)), timeout=30)
        return str(json.loads(raw).get("task") or "")
    except (StoreError, ValueError, TimeoutError):
        return str(job.form.get("task") or "")


def view_choices() -> list[tuple[str, str]]:
    """(id, title) of every view extension offered in the web UI."""
    found = []
    for ext_id, cls in view_extensions.get_extensions().items():
        try:
            if cls.get_default_visibility():
                found.append((ext_id, str(cls.get_title())))
        except Exception:  # a plugin's metadata may fail: offer it by its id
            found.append((ext_id, ext_id))
    return found


def inference_form(dataset: Job) -> tuple[Any, Any]:
    """(the data extension's class, its inference form or None); ValueError says why not."""
    cls = data_extensions.get_extension(dataset.extension or CLASSIFICATION)
    method = inspect.getattr_static(cls, "get_inference_form", None)
    if isinstance(method, staticmethod | classmethod):
        return cls, cls.get_inference_form()
    # An instance method (as Sunnybrook's: it lists the dataset's validation records): the
    # extension is built from the dataset's form, its paths confined to this gateway's roots.
    form = {k: v for k, v in dataset.form.items() if k not in ("data_roots", "is_inference_db")}
    roots = list(current_app.config["SETTINGS"].data_roots)
    return cls, cls(data_roots=roots, **form).get_inference_form()


def plugin_form(dataset: Job | None) -> dict[str, Any]:
    """The inference form's HTML from the plugin's own template, or why there is none."""
    if dataset is None:
        return {"html": None, "note": "the model's dataset is gone", "fields": []}
    ext_id = dataset.extension or CLASSIFICATION
    try:
        cls, form = inference_form(dataset)
        if form is None:
            return {"html": None, "note": None, "fields": []}
        source, context = cls.get_inference_template(form)
        html = Markup(render_template_string(source, **(context or {})))
    except NotImplementedError:
        return {"html": None, "note": None, "fields": []}
    except Exception as exc:  # plugin code: say what failed, keep the page
        note = f"data extension {ext_id!r}: no inference form: {type(exc).__name__}: {exc}"
        return {"html": None, "note": note, "fields": []}
    text = [
        f.name for f in form if f.type in ("StringField", "FileField") and f.name != "csrf_token"
    ]
    return {"html": html, "note": None, "fields": text}


def config_form(view_id: str) -> dict[str, Any]:
    """The view's config form from its own template (html None without one), or the error."""
    try:
        cls = view_extensions.get_extension(view_id)
        form = cls.get_config_form()
        if form is None:
            return {"html": None, "error": None}
        source, context = cls.get_config_template(form)
        html = Markup(render_template_string(source, **(context or {}))) if source else None
        return {"html": html, "error": None}
    except view_extensions.UnknownExtension as exc:
        return {"html": None, "error": str(exc)}
    except Exception as exc:  # a failing plugin
        return {"html": None, "error": f"view {view_id!r}: {type(exc).__name__}: {exc}"}


def config_fields(view_id: str) -> list[str]:
    """The names of the view's config form fields (none if it has no form)."""
    try:
        form = view_extensions.get_extension(view_id).get_config_form()
    except Exception:
        return []
    return [f.name for f in form if f.name != "csrf_token"] if form is not None else []


def context(job: Job, dataset: Job | None, view_id: str | None = None) -> dict[str, Any]:
    """What _generic_infer.html needs: plugin form, views, the chosen view's config."""
    default = DEFAULT_VIEWS.get(task_of(job), RAW_VIEW)
    views = view_choices()
    chosen = view_id if view_id in {v for v, _ in views} else default
    return {
        "plugin": plugin_form(dataset),
        "views": views,
        "view_id": chosen,
        "default_view": default,
        "config": config_form(chosen),
        "max_limit": MAX_INPUTS,
    }
