"""Built-in view "image-segmentation": the class map over the input, with a legend."""

from .view import Visualization

__all__ = ["Visualization"]
