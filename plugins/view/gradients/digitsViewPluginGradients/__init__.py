"""The image gradients view plugin: a predicted (dx, dy) drawn as an arrow over the image."""

from .view import Visualization

__all__ = ["Visualization"]
