"""Built-in view "image-bounding-boxes": detected boxes drawn over the input."""

from .view import Visualization

__all__ = ["Visualization"]
