"""How long a full garbage collection holds a view process's GIL, with Keras frozen and without.

Run as ``python bench/gc_pause.py [--quick]``. A view process imports Keras (and TensorFlow)
at its first model load; those modules hold some 330,000 tracked objects for the process's
life, and every full collection walks the objects that are not frozen, with the GIL held: no
request of that process moves meanwhile. Each child process here loads and warms a LeNet as
a view process does, the baseline after a plain ``import keras``, the figure after
``view_service.models.keras_frozen`` (import, collect, freeze), then times full collections.
The last line on stdout is one JSON object.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import arguments, finish, machine, run_json, say, start, versus  # noqa: E402

CHILD_FLAG = "--child"


def child(mode: str, path: Path, rounds: int) -> dict[str, Any]:
    """In a fresh process: import Keras (frozen or not), load and warm ``path``, time collecting."""
    if mode == "frozen":
        from view_service.models import keras_frozen

        keras = keras_frozen()
    else:
        import keras
    from view_service.models import LoadedModel

    model = LoadedModel(keras.models.load_model(path, compile=False))
    model.warm()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t) * 1e3)
    return {"gc_ms": times, "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}


def run(quick: bool) -> dict[str, Any]:
    """One child process per mode, each timing ``rounds`` full collections."""
    import keras

    from train_service import networks

    rounds = 3 if quick else 10
    env = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
    }
    with tempfile.TemporaryDirectory(prefix="digits-bench-gc-") as tmp:
        path = Path(tmp, "lenet.keras")
        keras.utils.set_random_seed(1)
        networks.lenet((28, 28, 1), 2).save(path)
        seen = {}
        for mode in ("plain", "frozen"):
            argv = [sys.executable, __file__, CHILD_FLAG, mode, str(path), str(rounds)]
            seen[mode] = run_json(argv, f"the {mode} child", 300, env)
            say(
                f"{mode:6s}: full collection median {statistics.median(seen[mode]['gc_ms']):.1f} ms"
            )
    median = {mode: statistics.median(s["gc_ms"]) for mode, s in seen.items()}
    return {
        "bench": "gc_pause",
        **versus(median["frozen"], median["plain"], "gc_full_ms_frozen", "gc_full_ms_plain", 2),
        "gc_full_ms_max": {mode: round(max(s["gc_ms"]), 2) for mode, s in seen.items()},
        "tracked_objects": {mode: s["tracked"] for mode, s in seen.items()},
        "frozen_objects": seen["frozen"]["frozen"],
        "collections_each": rounds,
        "machine": machine("tensorflow", "keras"),
    }


def main() -> int:
    """Parse arguments (or be a child), run, print the JSON line."""
    if CHILD_FLAG in sys.argv:
        import json

        at = sys.argv.index(CHILD_FLAG)
        mode, path, rounds = sys.argv[at + 1], Path(sys.argv[at + 2]), int(sys.argv[at + 3])
        print(json.dumps(child(mode, path, rounds)))
        return 0
    args = arguments(__doc__ or "", "3 collections each").parse_args()
    timer = start()
    return finish(run(args.quick), timer)


if __name__ == "__main__":
    sys.exit(main())
