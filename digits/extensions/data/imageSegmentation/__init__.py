"""Built-in image segmentation data extension (id "image-segmentation")."""

from .data import DataIngestion

__all__ = ["DataIngestion"]
