"""The Image Output view's config form (Flask-WTF: imported only by the gateway)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectField, StringField


class ConfigForm(FlaskForm):
    """Which output, and how its values become pixels."""

    pixel_conversion = SelectField(
        "Pixel conversion",
        choices=["normalize", "clip"],  # normalize: min..max to 0..255; clip: to 0..255
        default="normalize",
    )
    output = StringField("Output (empty: the first)", default="")
