"""Built-in image classification data extension (id "image-classification")."""

from .data import DataIngestion

__all__ = ["DataIngestion"]
