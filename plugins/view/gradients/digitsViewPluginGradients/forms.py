"""The config form of the gradients view (Flask-WTF: imported only by the gateway)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import FloatField, SelectField
from wtforms.validators import NumberRange


class ConfigForm(FlaskForm):
    """The arrow's colour and length scale."""

    arrow_color = SelectField("Arrow color", choices=["red", "green", "blue", "yellow"])
    arrow_size = FloatField(
        "Arrow size (pixels per unit of gradient; 0: fit the image)",
        default=0.0,
        validators=[NumberRange(min=0)],
    )
