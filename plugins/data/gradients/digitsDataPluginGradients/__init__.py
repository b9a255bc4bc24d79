"""DIGITS data plugin: synthetic images whose label is their (x, y) intensity gradient."""

from .data import DataIngestion

__all__ = ["DataIngestion"]
