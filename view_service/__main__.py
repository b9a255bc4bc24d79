"""``python -m view_service``: inference by request/reply in the ``view`` queue group."""

from __future__ import annotations

import sys
from functools import partial

from digits import subjects
from digits.service import ServiceRuntime, main
from view_service.handlers import infer

NAME = "view"


async def setup(rt: ServiceRuntime) -> None:
    """Answer inference requests."""
    assert rt.jobs is not None
    await rt.add_responder(subjects.RPC_INFER, subjects.QUEUE_VIEW, partial(infer, rt.jobs))


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
