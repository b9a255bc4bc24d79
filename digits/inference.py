"""The ``rpc.infer.*`` contract's bounds and defaults: the view service and its callers share them.

The request and reply shapes are the view service's own (``view_service.classify`` and
``view_service.generic``); what a caller must know before it asks lives here, so that the gateway
checks an upload against the same bound the view service enforces.
"""

from __future__ import annotations

MAX_IMAGE_BYTES = 8 << 20  # one image of a classify request
MAX_TOTAL_BYTES = 8 << 20  # all the ``images`` (or uploaded files) of one many/topn/generic request
MAX_INPUTS = 64  # inputs of one generic request: the views' HTML must fit in one reply
DEFAULT_VIEWS = {"segmentation": "image-segmentation"}  # a generic model's view by task
RAW_VIEW = "all-outputs"  # the view of every other task
