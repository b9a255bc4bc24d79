"""Names DIGITS used for dataset stages and files, kept for plugins written against DIGITS."""

from __future__ import annotations

# Dataset stages (the ``stage`` argument of DataIngestionInterface.itemize_entries)
TRAIN_DB = "train_db"
VAL_DB = "val_db"
TEST_DB = "test_db"
STAGES = (TRAIN_DB, VAL_DB, TEST_DB)

# Text lists and files of a dataset
TRAIN_FILE = "train.txt"
VAL_FILE = "val.txt"
TEST_FILE = "test.txt"
LABELS_FILE = "labels.txt"
MEAN_FILE_IMAGE = "mean.jpg"

# Classification jobs
DEFAULT_BATCH_SIZE = 16

# Segmentation datasets: the name of the attribute holding the label palette
COLOR_PALETTE_ATTRIBUTE = "color_palette"
