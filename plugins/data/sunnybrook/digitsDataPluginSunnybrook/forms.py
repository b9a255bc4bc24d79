"""The Sunnybrook plugin's Flask-WTF forms, with DIGITS's field names.

Paths are not checked for existence here: the web server may not see the data folders that the
ingest workers see; the dataset job checks them (confined to DIGITS_DATA_ROOTS) and says why.
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
    """The form to create a Sunnybrook dataset."""

    image_folder = StringField(
        "Image folder",
        validators=[validators.DataRequired()],
        description="The folder of DICOM cases (e.g. challenge_training/, holding SC-HF-I-1/...)",
    )
    contour_folder = StringField(
        "Contour folder",
        validators=[validators.DataRequired()],
        description="The expert contours: "
        "<case>/contours-manual/IRCCI-expert/IM-0001-NNNN-icontour-manual.txt",
    )
    channel_conversion = SelectField(
        "Channel conversion",
        choices=[SelectChoice("L", "Grayscale"), SelectChoice("RGB", "RGB")],
        default="L",
        description="Grayscale keeps one channel; RGB copies it to three. "
        "16-bit data stays 16-bit.",
    )
    folder_pct_val = IntegerField(
        "% for validation",
        default=10,
        validators=[validators.NumberRange(min=0, max=100)],
        description="The share of contours set apart for the validation set.",
    )


class InferenceForm(FlaskForm):
    """The form to test a DICOM file, or a record of the validation set."""

    test_image_file = StringField(
        "DICOM file",
        validators=[validators.Optional()],
        description="A DICOM file on the server (in the data folders) to segment",
    )
    validation_record = SelectField(
        "Record from validation set",
        choices=[SelectChoice("none", "- select record -")],
        default="none",
        description="Test a record of the validation set: its contour is the ground truth.",
    )
