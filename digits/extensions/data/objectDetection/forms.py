"""The object detection dataset form (Flask-WTF), with DIGITS's field names.

Folders are checked by the dataset job (confined to DIGITS_DATA_ROOTS), which sees the data.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, StringField, validators

try:
    from wtforms import SelectChoice
except ImportError:  # WTForms before 3.3 takes (value, label) tuples

    def SelectChoice(value: str, label: str) -> tuple[str, str]:  # noqa: N802
        """A (value, label) choice, as older WTForms wants it."""
        return (value, label)


class DatasetForm(FlaskForm):
    """The form to create an object detection dataset from images and KITTI labels."""

    train_image_folder = StringField(
        "Training image folder", validators=[validators.DataRequired()]
    )
    train_label_folder = StringField(
        "Training label folder",
        validators=[validators.DataRequired()],
        description="One KITTI .txt file per image, with the image's name.",
    )
    val_image_folder = StringField("Validation image folder", validators=[validators.Optional()])
    val_label_folder = StringField("Validation label folder", validators=[validators.Optional()])
    folder_pct_val = IntegerField(
        "% for validation",
        default=0,
        validators=[validators.Optional(), validators.NumberRange(min=0, max=100)],
        description="Without validation folders: the share of training images set apart.",
    )
    resize_image_width = IntegerField(
        "Resize width", validators=[validators.Optional(), validators.NumberRange(min=1)]
    )
    resize_image_height = IntegerField(
        "Resize height", validators=[validators.Optional(), validators.NumberRange(min=1)]
    )
    channel_conversion = SelectField(
        "Channel conversion",
        choices=[
            SelectChoice("RGB", "RGB"),
            SelectChoice("L", "Grayscale"),
            SelectChoice("none", "None"),
        ],
        default="none",
    )
    max_bboxes = IntegerField(
        "Boxes per image",
        validators=[validators.Optional(), validators.NumberRange(min=1)],
        description="Rows in each label array; blank: the most objects any image has.",
    )
    custom_classes = StringField(
        "Custom classes",
        validators=[validators.Optional()],
        description="Comma-separated class names (class i is the i-th); other types are left "
        "out. Blank: every type found, sorted.",
    )
    encoding = SelectField(
        "Image encoding",
        choices=[
            SelectChoice("none", "None (raw)"),
            SelectChoice("png", "PNG (lossless)"),
            SelectChoice("jpg", "JPEG"),
        ],
        default="none",
    )
