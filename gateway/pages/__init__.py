"""The HTML pages: htmx partials over real forms, one blueprint per resource."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Register every page blueprint that exists."""
    from . import auth, common

    app.register_blueprint(auth.bp)
    app.context_processor(
        lambda: {"dataset_menu": common.dataset_menu, "model_menu": common.model_menu}
    )
    for name in (
        "home",
        "datasets",
        "models",
        "models_infer",
        "models_generic",
        "jobs",
        "events",
        "compare",
        "registry",
    ):
        try:
            module = __import__(f"gateway.pages.{name}", fromlist=["bp"])
        except ModuleNotFoundError as exc:
            if exc.name != f"gateway.pages.{name}":
                raise
            continue
        app.register_blueprint(module.bp)
