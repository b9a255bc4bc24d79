"""Built-in view "image-output": an output that is an image, beside the input."""

from .view import Visualization

__all__ = ["Visualization"]
