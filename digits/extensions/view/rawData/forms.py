"""The Raw Data view's config form (Flask-WTF: imported only by the gateway)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField
from wtforms.validators import NumberRange


class ConfigForm(FlaskForm):
    """How many values of each output to show."""

    max_values = IntegerField(
        "Values shown per output", default=100, validators=[NumberRange(min=1, max=10000)]
    )
