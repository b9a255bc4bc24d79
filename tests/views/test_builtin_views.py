"""Built-in view extensions: discovery, process_data and rendering to self-contained HTML."""

from __future__ import annotations

import base64
import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

from digits.extensions import view as views
from digits.extensions.view.images import palette
from digits.extensions.view.interface import DatasetInfo
from digits.extensions.view.rendering import Inference, ViewError, render

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(html: str) -> list[np.ndarray]:
    """Every embedded PNG of an HTML fragment, decoded."""
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(m)))) for m in DATA_URI.findall(html)]


def test_builtins_are_discovered_with_digits_ids():
    found = views.get_extensions(refresh=True)
    for ext_id in ("all-outputs", "image-output", "image-segmentation", "image-bounding-boxes"):
        cls = found[ext_id]
        assert issubclass(cls, views.VisualizationInterface) and cls.get_title()
    with pytest.raises(views.UnknownExtension, match=r"'nope'.*'all-outputs'"):
        views.get_extension("nope")


def test_a_broken_plugin_is_listed_not_fatal(tmp_path, monkeypatch):
    dist = tmp_path / "broken_view-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-view\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[digits.plugins.view]\nclass = brokenview:View\n")
    (tmp_path / "brokenview.py").write_text("raise RuntimeError('cannot import me')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = views.get_extensions(refresh=True)
        broken = views.broken_extensions()
        assert "image-segmentation" in found
        assert broken == {"broken-view: brokenview:View": "RuntimeError: cannot import me"}
    finally:
        monkeypatch.undo()
        sys.modules.pop("brokenview", None)
        views.get_extensions(refresh=True)


def test_segmentation_colours_the_classes_over_the_input_with_a_legend():
    image = np.full((8, 10), 100, np.uint8)
    scores = np.zeros((8, 10, 3), np.float32)
    scores[:, :, 0] = 1.0  # background everywhere ...
    scores[2:5, 3:7, 2] = 5.0  # ... but a block of class 2
    dataset = DatasetInfo(labels=["background", "ring", "cavity"])
    config = {"opacity": 1.0, "colormap": "generated"}
    out = render("image-segmentation", config, dataset, [Inference("scan", image, {"o": scores})])
    overlay, class_map = _images(out.views_html[0])
    colors = palette(3)
    assert overlay.shape == (8, 10, 3)
    assert (overlay[2:5, 3:7] == colors[2]).all(), "opacity 1: the class colour itself"
    assert (overlay[0, 0] == 100).all(), "the background leaves the input alone"
    assert (class_map[2:5, 3:7] == colors[2]).all() and (class_map[0, 0] == 0).all()
    assert "cavity: 12 pixels" in out.views_html[0] and "ring" not in out.views_html[0]
    legend = out.header_html
    assert legend is not None and "Legend" in legend
    for name, color in zip(["background", "ring", "cavity"], colors, strict=True):
        assert name in legend and "#{:02x}{:02x}{:02x}".format(*color) in legend
    assert "(12 pixels)" in legend and "(68 pixels)" in legend


def test_segmentation_takes_the_dataset_palette_and_shows_ground_truth():
    image = np.zeros((4, 4, 1), np.uint16)
    image[:, :2] = 4000  # 12-bit scan: stretched for display
    classes = np.array([[0, 1, 1, 0]] * 4, np.int32)
    truth = np.array([[0, 0, 1, 1]] * 4, np.uint8)
    dataset = DatasetInfo(extension_userdata={"color_palette": [0, 0, 0, 10, 200, 30]})
    out = render(
        "image-segmentation",
        {"opacity": "0.5"},
        dataset,
        [Inference("s", image, {"o": classes}, truth)],
    )
    overlay, class_map, ground = _images(out.views_html[0])
    assert tuple(class_map[0, 1]) == (10, 200, 30)
    assert tuple(overlay[0, 0]) == (255, 255, 255) and tuple(overlay[0, 3]) == (0, 0, 0)
    assert tuple(overlay[0, 1]) == (132, 228, 142), "half of white and half of the colour"
    assert tuple(ground[0, 3]) == (10, 200, 30) and tuple(ground[0, 1]) == (0, 0, 0)
    assert "class 1" in out.header_html


@pytest.mark.parametrize(
    ("config", "message"),
    [({"opacity": 2}, "opacity 2 is out of range 0..1"), ({"colormap": "x"}, "colormap 'x'")],
)
def test_bad_view_config_is_named(config, message):
    with pytest.raises(ViewError, match=message):
        render("image-segmentation", config, DatasetInfo(), [])


def test_raw_data_shows_shapes_and_values_escaped():
    out = render(
        "all-outputs",
        {"max_values": 3},
        DatasetInfo(),
        [Inference("<b>x</b>", None, {"vec": np.array([0.5, -1.25, 3.0, 9.0])})],
    )
    html = out.views_html[0]
    assert "0.5, -1.25, 3, ... (1 more)" in html and ">4<" in html and "float64" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "as numbers" in out.header_html


def test_image_output_normalizes_or_clips():
    output = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4, 1)
    inputs = [Inference("a", np.zeros((3, 4, 3), np.uint8), {"out": output})]
    normalized = _images(render("image-output", {}, DatasetInfo(), inputs).views_html[0])[1]
    assert normalized.min() == 0 and normalized.max() == 255
    clipped = render("image-output", {"pixel_conversion": "clip"}, DatasetInfo(), inputs)
    assert _images(clipped.views_html[0])[1].max() == 1
    with pytest.raises(ViewError, match=r"failed on input 0 \('a'\).*not an HxW"):
        render("image-output", {}, DatasetInfo(), [Inference("a", None, {"o": np.zeros(5)})])


def test_bounding_boxes_are_drawn_above_the_threshold():
    image = np.zeros((20, 20), np.uint8)
    boxes = np.array([[2, 3, 10, 12, 0.9], [1, 1, 5, 5, 0.1], [0, 0, 0, 0, 0]], np.float32)
    config = {"box_color": "green", "line_width": 1, "threshold": 0.5}
    out = render(
        "image-bounding-boxes", config, DatasetInfo(), [Inference("i", image, {"bbox-list": boxes})]
    )
    drawn = _images(out.views_html[0])[0]
    assert tuple(drawn[3, 5]) == (0, 255, 0) and tuple(drawn[12, 2]) == (0, 255, 0)
    assert tuple(drawn[7, 6]) == (0, 0, 0) and tuple(drawn[1, 1]) == (0, 0, 0)
    assert "1 bounding boxes found" in out.header_html and "0.900" in out.views_html[0]


def test_config_forms_build_lazily_in_a_flask_app():
    from flask import Flask

    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", WTF_CSRF_ENABLED=False)
    with app.test_request_context():
        for ext_id, cls in views.get_extensions().items():
            form = cls.get_config_form()
            source, context = cls.get_config_template(form)
            from flask import render_template_string

            html = render_template_string(source, **context)
            assert "<select" in html or "<input" in html, ext_id
