"""The Image Segmentation view's config form (Flask-WTF: imported only by the gateway)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import FloatField, SelectField
from wtforms.validators import NumberRange


class ConfigForm(FlaskForm):
    """The colours and how strongly they cover the input."""

    colormap = SelectField(
        "Colormap",
        choices=["dataset", "generated"],  # dataset: its palette, if it has one
        default="dataset",
    )
    opacity = FloatField("Overlay opacity", default=0.5, validators=[NumberRange(min=0.0, max=1.0)])
