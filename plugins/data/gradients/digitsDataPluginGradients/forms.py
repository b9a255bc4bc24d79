"""The gradients plugin's Flask-WTF forms, with DIGITS's field names."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import FloatField, IntegerField, validators


class DatasetForm(FlaskForm):
    """The form to create an image gradients dataset."""

    train_image_count = IntegerField(
        "Train image count",
        default=1000,
        validators=[validators.DataRequired(), validators.NumberRange(min=1)],
    )
    val_image_count = IntegerField(
        "Validation image count",
        default=250,
        validators=[validators.Optional(), validators.NumberRange(min=0)],
    )
    test_image_count = IntegerField(
        "Test image count",
        default=0,
        validators=[validators.Optional(), validators.NumberRange(min=0)],
    )
    image_width = IntegerField(
        "Image width",
        default=32,
        validators=[validators.DataRequired(), validators.NumberRange(min=1)],
    )
    image_height = IntegerField(
        "Image height",
        default=32,
        validators=[validators.DataRequired(), validators.NumberRange(min=1)],
    )
    seed = IntegerField(
        "Seed",
        default=0,
        validators=[validators.Optional(), validators.NumberRange(min=0)],
        description="The same seed gives the same images.",
    )


class InferenceForm(FlaskForm):
    """The form to test a gradient regression model: one gradient, or a count of random ones."""

    gradient_x = FloatField(
        "Gradient (x)", validators=[validators.Optional(), validators.NumberRange(-0.5, 0.5)]
    )
    gradient_y = FloatField(
        "Gradient (y)", validators=[validators.Optional(), validators.NumberRange(-0.5, 0.5)]
    )
    test_image_count = IntegerField(
        "Test image count", validators=[validators.Optional(), validators.NumberRange(min=0)]
    )
