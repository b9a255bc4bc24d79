"""The Bounding Boxes view's config form (Flask-WTF: imported only by the gateway)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import FloatField, IntegerField, SelectField
from wtforms.validators import NumberRange


class ConfigForm(FlaskForm):
    """Box colour, line width and the confidence below which boxes are hidden."""

    box_color = SelectField(
        "Box color",
        choices=["red", "green", "blue", "yellow"],
        default="red",
    )
    line_width = IntegerField("Line width", default=2, validators=[NumberRange(min=1, max=20)])
    threshold = FloatField("Confidence threshold", default=0.0, validators=[NumberRange(min=0)])
