"""The segmentation dataset form (Flask-WTF), with DIGITS's field names.

Folders are checked by the dataset job (confined to DIGITS_DATA_ROOTS), which sees the data.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, SelectField, StringField, validators

try:
    from wtforms import SelectChoice
except ImportError:  # WTForms before 3.3 takes (value, label) tuples

    def SelectChoice(value: str, label: str) -> tuple[str, str]:  # noqa: N802
        """A (value, label) choice, as older WTForms wants it."""
        return (value, label)


class DatasetForm(FlaskForm):
    """The form to create an image segmentation dataset."""

    feature_folder = StringField(
        "Feature image folder",
        validators=[validators.DataRequired()],
        description="A folder of images.",
    )
    label_folder = StringField(
        "Label image folder",
        validators=[validators.DataRequired()],
        description="One label image per feature image, with the same name (any image "
        "extension): paletted or grayscale (pixel value = class), or RGB with a colour map file.",
    )
    folder_pct_val = IntegerField(
        "% for validation",
        default=10,
        validators=[validators.NumberRange(min=0, max=100)],
        description="The share of images set apart for validation (without a validation folder).",
    )
    has_val_folder = BooleanField("Separate validation images", default=False)
    validation_feature_folder = StringField(
        "Validation feature image folder", validators=[validators.Optional()]
    )
    validation_label_folder = StringField(
        "Validation label image folder", validators=[validators.Optional()]
    )
    channel_conversion = SelectField(
        "Channel conversion",
        choices=[
            SelectChoice("RGB", "RGB"),
            SelectChoice("L", "Grayscale"),
            SelectChoice("none", "None"),
        ],
        default="none",
        description="Applied to feature images; label images are not affected.",
    )
    class_labels_file = StringField(
        "Class labels (optional)",
        validators=[validators.Optional()],
        description="A text file: line i names class i-1.",
    )
    colormap_method = SelectField(
        "Color map specification",
        choices=[
            SelectChoice("label", "From label image"),
            SelectChoice("textfile", "From text file"),
        ],
        default="label",
    )
    colormap_text_file = StringField(
        "Color map file",
        validators=[validators.Optional()],
        description="For RGB label images: line i holds 'r g b', the colour of class i-1.",
    )
    encoding = SelectField(
        "Image encoding",
        choices=[SelectChoice("none", "None (raw)"), SelectChoice("png", "PNG (lossless)")],
        default="none",
    )
