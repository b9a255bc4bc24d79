"""The gateway serves view plugins' static files (the gradients plugin, pip-installed)."""

from __future__ import annotations

import pytest
from flask import Flask

from digits.extensions import view as views
from gateway.plugin_static import bp
from tests.pluginpkg import pip_install, use_in_process


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A tiny app with only the blueprint, the gradients view plugin installed."""
    use_in_process(pip_install("view/gradients", tmp_path_factory.mktemp("plugins")))
    assert "image-gradients-view" in views.get_extensions(refresh=True)
    app = Flask(__name__)
    app.register_blueprint(bp)
    return app.test_client()


def test_a_plugins_static_file_is_served(client):
    with client.get("/extensions/view/image-gradients-view/static/gradients.css") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/css" and b".digits-view.gradients" in response.data


@pytest.mark.parametrize(
    "path",
    [
        "/extensions/view/no-such-view/static/gradients.css",
        "/extensions/view/image-gradients-view/static/missing.css",
        "/extensions/view/image-gradients-view/static/../view.py",
        "/extensions/view/image-gradients-view/static/..%2fview.py",
        "/extensions/view/image-segmentation/static/anything.css",  # a built-in without static/
    ],
)
def test_unknown_ids_missing_files_and_escapes_are_404(client, path):
    with client.get(path) as response:
        assert response.status_code == 404
