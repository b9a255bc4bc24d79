"""``python -m train_service``: the training worker (training lands with issue 4)."""

from __future__ import annotations

import sys

from digits.service import ServiceRuntime, main

NAME = "train"


async def setup(rt: ServiceRuntime) -> None:
    """Register this service's consumers (none yet: it heartbeats and forwards dead letters)."""


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
