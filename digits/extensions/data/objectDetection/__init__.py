"""Built-in object detection data extension (id "image-object-detection"), KITTI labels."""

from .data import DataIngestion

__all__ = ["DataIngestion"]
