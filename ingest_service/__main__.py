"""``python -m ingest_service``: the dataset and job-command worker."""

from __future__ import annotations

import sys
from functools import partial

from digits import subjects
from digits.commands import handle_job_command
from digits.service import ServiceRuntime, main

NAME = "ingest"


async def setup(rt: ServiceRuntime) -> None:
    """Register this service's consumers."""
    assert rt.js is not None and rt.jobs is not None
    rt.add_worker(
        subjects.CONSUMERS[subjects.CONSUMER_JOB_COMMANDS],
        partial(handle_job_command, rt.js, rt.jobs),
    )


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
