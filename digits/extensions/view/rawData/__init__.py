"""Built-in view "all-outputs" (Raw Data): every output of the network, as numbers."""

from .view import Visualization

__all__ = ["Visualization"]
