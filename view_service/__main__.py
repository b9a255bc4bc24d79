"""``python -m view_service``: inference by request/reply in the ``view`` queue group."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from digits import subjects
from digits.service import ServiceRuntime, main
from digits.store import store_from_settings
from view_service.handlers import ROUTES, respond
from view_service.models import Batcher, Deps, ModelCache

NAME = "view"


async def setup(rt: ServiceRuntime) -> None:
    """Answer inference requests: classify one, classify many, top N, generic with views."""
    assert rt.jobs is not None
    settings = rt.settings
    store = store_from_settings(settings)
    rt.defer(store.close)
    work = Path(settings.data_dir, "cache", "view")
    deps = Deps(
        cache=ModelCache(store, rt.jobs, work, max_bytes=settings.model_cache_mb << 20),
        batcher=Batcher(max_batch=32, max_delay=0.005),
        store=store,
        data_roots=settings.data_roots,
        work_dir=work,
    )
    for subject in ROUTES:
        # Enough concurrent single-image requests to fill one batch of the batcher.
        await rt.add_responder(subject, subjects.QUEUE_VIEW, partial(respond, deps), concurrency=32)


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
