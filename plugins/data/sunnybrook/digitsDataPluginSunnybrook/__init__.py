"""DIGITS data plugin for the Sunnybrook Cardiac MR dataset (left-ventricle segmentation)."""

from .data import DataIngestion

__all__ = ["DataIngestion"]
