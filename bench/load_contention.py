"""What a model load beside a serving process costs its replies on this machine: the swap's floor.

Run as ``python bench/load_contention.py [--quick]``. During an alias swap one view process
loads the new holder (``keras.models.load_model`` and the warm-up traces, as ``ModelCache``
and ``LoadedModel.warm`` do) while a sibling serves; the two share this machine's cores. This
bench isolates that: one process serves a LeNet the way a view process predicts a single image
(the micro-batcher's 2 ms gather, then ``LoadedModel.predict`` in a thread, paced like
bench/pipeline's client), first alone, then beside a second process that loads and warms the
same model over and over, then beside that loader at nice 19, then at nice 19 under SCHED_IDLE
(``lower_priority(19, idle=True)``, as the view's out-of-group loader runs). The rounds
alternate. The p99 beside the loader over the p99 alone is the least p99 ratio a swap can have
here, with no bus, no registry and no other service in the way (bench/pipeline's
``p99_swap_only_ratio`` measures the real swap). The last line on stdout is one JSON object.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # as a view process of two on 2 cores
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import arguments, finish, machine, percentile, ratios, say, start  # noqa: E402

LOADER_FLAG = "--loader"
GATHER_S = 0.002  # the view's micro-batcher waits this long for more single images
PACE_S = 0.005  # between one reply and the next request, as bench/pipeline's client
GOAL_P99_RATIO = 1.5  # issue 16's swap goal, for comparison
# (name, the loader's nice value or None for no loader, SCHED_IDLE too)
PHASES = (
    ("alone", None, False),
    ("loading", 0, False),
    ("loading_nice19", 19, False),
    ("loading_idle", 19, True),
)


def loaded(path: Path) -> Any:
    """The saved model loaded and warmed as a view process does it for a new alias holder."""
    import keras

    from view_service.models import LoadedModel

    model = LoadedModel(keras.models.load_model(path, compile=False))
    model.warm()
    return model


def loader(path: Path, nice: int, idle: bool) -> None:
    """Load and warm ``path`` until killed; a line on stdout after the first load."""
    from digits.service import lower_priority

    lower_priority(nice, idle=idle)
    loaded(path)
    print("loading", flush=True)
    while True:
        loaded(path)


async def serve(model: Any, seconds: float) -> list[float]:
    """Predict one image at a time for ``seconds``, as a view request does; each latency in ms."""
    x = np.zeros((1, *model.sample_shape), np.float32)
    for _ in range(50):  # settle
        await asyncio.to_thread(model.predict, x)
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sent = time.perf_counter()
        await asyncio.sleep(GATHER_S)
        await asyncio.to_thread(model.predict, x)
        latencies.append((time.perf_counter() - sent) * 1e3)
        await asyncio.sleep(PACE_S)
    return latencies


def beside(path: Path, nice: int | None, idle: bool, model: Any, seconds: float) -> list[float]:
    """Serve for ``seconds`` alone (``nice`` None) or beside a loader at that priority."""
    if nice is None:
        return asyncio.run(serve(model, seconds))
    argv = [sys.executable, __file__, LOADER_FLAG, str(path), str(nice), str(int(idle))]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "loading":
            raise RuntimeError(f"the loader process stopped (rc {child.wait()})")
        return asyncio.run(serve(model, seconds))
    finally:
        child.kill()
        child.wait()


def run(quick: bool) -> dict[str, Any]:
    """The rounds, alternating alone / beside the loader / beside the niced loader."""
    import keras

    from train_service import networks

    rounds, seconds = (1, 3.0) if quick else (3, 5.0)
    with tempfile.TemporaryDirectory(prefix="digits-bench-load-") as tmp:
        path = Path(tmp, "lenet.keras")
        keras.utils.set_random_seed(1)
        networks.lenet((28, 28, 1), 2).save(path)
        model = loaded(path)
        phases: dict[str, list[list[float]]] = {name: [] for name, _, _ in PHASES}
        for n in range(rounds):
            for phase, nice, idle in PHASES:
                phases[phase].append(beside(path, nice, idle, model, seconds))
                say(f"round {n + 1} {phase:15s} p99 {percentile(phases[phase][-1], 99):6.2f} ms")
    p99 = {k: [round(percentile(r, 99), 2) for r in v] for k, v in phases.items()}
    p50 = {k: round(percentile([x for r in v for x in r], 50), 2) for k, v in phases.items()}
    per_round = {k: ratios(p99[k], p99["alone"]) for k in p99}
    median = {k: round(statistics.median(v), 3) for k, v in per_round.items()}
    say(f"p99 per round (ms): {p99}; ratio to alone, median: {median}")
    return {
        "bench": "load_contention",
        "p99_ms": p99,
        "p50_ms": p50,
        "requests": {k: sum(len(r) for r in v) for k, v in phases.items()},
        "p99_ratio_per_round": {k: per_round[k] for k in phases if k != "alone"},
        "p99_ratio_median": median["loading"],
        "p99_ratio_median_nice19": median["loading_nice19"],
        "p99_ratio_median_idle": median["loading_idle"],
        "goal_p99_ratio_of_the_swap": GOAL_P99_RATIO,
        "machine": machine("tensorflow", "keras"),
    }


def main() -> int:
    """Parse arguments (or be the loader), run, print the JSON line."""
    if LOADER_FLAG in sys.argv:
        at = sys.argv.index(LOADER_FLAG)
        loader(Path(sys.argv[at + 1]), int(sys.argv[at + 2]), sys.argv[at + 3] == "1")
        return 0
    args = arguments(__doc__ or "", "one short round").parse_args()
    timer = start()
    return finish(run(args.quick), timer)


if __name__ == "__main__":
    sys.exit(main())
