"""Training benchmark: ShardedDataset through ``model.fit`` against the same data in memory.

Run as ``python bench/train.py [--quick]``. It writes LeNet (28x28x1) and ResNet-18 (224x224x3)
datasets in png and none encodings with ``digits.dataset``'s writers. For each case (network and
encoding) one fresh process builds the same network four times, compiled identically, and trains
one on the service's input pipeline (``train_service.data.ShardedDataset``: mean image, scale
1/255, shuffled; default settings, so the decoded-sample cache is on), one on the pipeline with
``workers=2``, one on the pipeline with the cache off (``cache_mb=0``: every epoch decodes, as
before the cache), and one on the same samples decoded up front into numpy (``model.fit(x, y)``).
The first epoch of each is untimed in the ratios (it fills the cache; its rate is reported apart
as ``warmup_img_s``); then the modes take turns, one epoch at a time, so a shared machine's drift
hits them alike: every timed epoch is a steady-state one. Images/s counts the batches after each
epoch's first. Another process times ``ShardedDataset.__getitem__`` alone, stage by stage.
Readable lines go to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from digits.dataset import (
    Manifest,
    MeanAccumulator,
    ShardInfo,
    ShardWriter,
    StageInfo,
    mean_npy_bytes,
    shard_key,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import (  # noqa: E402
    Timer,
    arguments,
    emit,
    finish,
    machine,
    ratio,
    ratios,
    run_json,
    say,
    start,
)

CLASSES = 10
SCALE = 1.0 / 255.0  # train_service.session.SCALE
MEAN = "image"
ENCODINGS = ("png", "none")
GOAL_RATIO = 0.9
STAGE = "train_db"
CHILD_TIMEOUT_S = 1200
IN_MEMORY = "in_memory"
# The service builds ShardedDataset without workers or decode_threads (train_service/session.py).
PIPELINES: dict[str, dict[str, Any]] = {
    "pipeline": {},
    "pipeline_workers2": {"workers": 2},
    "pipeline_nocache": {"cache_mb": 0},
}
MODES = (*PIPELINES, IN_MEMORY)


@dataclasses.dataclass(frozen=True)
class Case:
    """One network, the dataset it trains on and how long it is timed."""

    model: str  # a train_service.networks builder
    shape: tuple[int, int, int]
    count: int  # samples, a multiple of batch_size: no step has a partial batch
    shard_size: int
    batch_size: int
    rounds: int  # timed epochs per mode, taken in turns

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in one epoch."""
        return self.count // self.batch_size

    @property
    def measured_steps(self) -> int:
        """Timed steps per mode: every epoch's but the first."""
        return self.rounds * (self.steps_per_epoch - 1)


CASES = {
    "lenet": Case("lenet", (28, 28, 1), 10240, 1024, 64, 4),
    "resnet18": Case("resnet18", (224, 224, 3), 160, 64, 16, 4),
}
QUICK_CASES = {
    "lenet": Case("lenet", (28, 28, 1), 2048, 512, 64, 2),
    "resnet18": Case("resnet18", (224, 224, 3), 48, 24, 16, 1),
}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# --------------------------------------------------------------------------- datasets


def _features(case: Case, first: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fixed-seed uint8 images from ``first`` on (class gratings plus noise), labels."""
    rng = np.random.default_rng([seed, first])
    h, w, c = case.shape
    labels = rng.integers(0, CLASSES, count)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    angle = labels * (np.pi / CLASSES) + rng.uniform(-0.2, 0.2, count)
    freq = 2.0 + labels * 0.7 + rng.uniform(-0.3, 0.3, count)
    phase = rng.uniform(0, 2 * np.pi, (count, c))
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    wave = np.sin(2 * np.pi * freq[:, None, None, None] * proj[..., None] + phase[:, None, None])
    noise = rng.normal(0, 6, (count, h, w, c))
    images = np.clip(128 + 90 * wave + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_datasets(case: Case, name: str, tmp: Path, seed: int = 0) -> dict[str, Path]:
    """The case's dataset root per encoding (the same samples in each), with mean.npy."""
    roots = {enc: tmp / f"{name}-{enc}" for enc in ENCODINGS}
    acc = MeanAccumulator()
    shards: list[ShardInfo] = []
    histogram: dict[str, int] = {}
    for n, first in enumerate(range(0, case.count, case.shard_size)):
        count = min(case.shard_size, case.count - first)
        images, labels = _features(case, first, count, seed)
        key = shard_key(STAGE, n)
        for enc, root in roots.items():
            with ShardWriter(root / key) as writer:
                for image, label in zip(images, labels, strict=True):
                    writer.put(image, int(label), enc)
            if enc == ENCODINGS[0]:
                for k, v in writer.histogram.items():
                    histogram[k] = histogram.get(k, 0) + v
        for image in images:
            acc.add(image)
        shards.append(ShardInfo(key, count))
    mean = mean_npy_bytes(acc.mean())
    for enc, root in roots.items():
        manifest = Manifest(
            job_id=f"bench-{name}-{enc}",
            labels=[str(i) for i in range(CLASSES)],
            feature_shape=list(case.shape),
            feature_dtype="uint8",
            encoding=enc,
            stages={STAGE: StageInfo(list(shards), case.count, histogram=dict(histogram))},
            mean={"npy": "mean.npy"},
        )
        (root / "mean.npy").write_bytes(mean)
        (root / "manifest.json").write_bytes(manifest.to_json())
    return roots


def _disk_mb(root: Path) -> float:
    """Size of the shard files under ``root`` in MiB."""
    return round(sum(p.stat().st_size for p in root.rglob("*.lmdb")) / 2**20, 1)


# --------------------------------------------------------------------------- child: the fits


def _build(case: Case) -> Any:
    """The case's network, freshly built and compiled as the service compiles it (SGD here)."""
    import keras

    from train_service import networks

    keras.utils.set_random_seed(0)
    model = networks.build_network(case.model, case.shape, CLASSES)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _in_memory(root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Every sample decoded up front, mean-subtracted and scaled as the pipeline does; seconds."""
    from digits import dataset
    from train_service.data import ShardedDataset

    timer = Timer()
    ds = dataset.open(str(root))
    h, w, c = ds.manifest.feature_shape
    x = np.empty((ds.count(STAGE), h, w, c), np.float32)
    y = np.empty(ds.count(STAGE), np.int32)
    # Read through ShardedDataset.load: LMDB lets a process open a shard file only once, and
    # the pipelines' shared readers hold them (Dataset.samples would raise lmdb.Error here).
    with ShardedDataset(ds, STAGE, 1, shuffle=False, training=False, cache_mb=0) as reader:
        for i in range(len(x)):
            x[i], label = reader.load(i)
            y[i] = int(label)  # type: ignore[arg-type]
    mean = ds.mean()
    assert mean is not None
    x -= np.asarray(mean, np.float32).reshape(h, w, c)
    x *= np.float32(SCALE)
    return x, y, timer.seconds


@dataclasses.dataclass
class Epoch:
    """One timed epoch: images, seconds and process CPU seconds after its first batch, etc."""

    images: int
    seconds: float
    cpu_s: float  # all threads of the process: the model's, the pipeline's, Keras's
    first_batch_s: float
    loss: float

    @property
    def img_s(self) -> float:
        """Images per second after the first batch."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """One mode of a case: a model and its data, trained one epoch per call."""

    def __init__(self, case: Case, mode: str, root: Path) -> None:
        self.case, self.mode, self.root = case, mode, root
        self.model = _build(case)
        self.train: Any = None
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.prep_s = 0.0
        if mode in PIPELINES:
            from digits import dataset
            from train_service.data import ShardedDataset

            self.train = ShardedDataset(
                dataset.open(str(root)),
                STAGE,
                case.batch_size,
                shuffle=True,
                seed=0,
                mean=MEAN,
                scale=SCALE,
                training=True,
                **PIPELINES[mode],
            )
        else:
            self.x, self.y, self.prep_s = _in_memory(root)

    def epoch(self) -> Epoch:
        """Train one epoch; time it from the end of its first batch to the end of its last."""
        import keras

        ends: list[float] = []
        cpu: list[float] = []

        class BatchEnds(keras.callbacks.Callback):
            """Records when each training batch ends, and the process's CPU time then."""

            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                ends.append(time.perf_counter())
                cpu.append(time.process_time())

        kw: dict[str, Any] = {"epochs": 1, "verbose": 0, "callbacks": [BatchEnds()]}
        started = time.perf_counter()
        if self.train is not None:  # as train_service/session.py calls it
            history = self.model.fit(self.train, shuffle=False, **kw)
        else:
            history = self.model.fit(
                self.x, self.y, batch_size=self.case.batch_size, shuffle=True, **kw
            )
        if len(ends) != self.case.steps_per_epoch:
            raise RuntimeError(f"{self.mode}: {len(ends)} batches, not {self.case.steps_per_epoch}")
        return Epoch(
            images=(len(ends) - 1) * self.case.batch_size,
            seconds=ends[-1] - ends[0],
            cpu_s=cpu[-1] - cpu[0],
            first_batch_s=ends[0] - started,
            loss=float(history.history["loss"][-1]),
        )

    def close(self) -> None:
        """Close the pipeline's decode threads and shard files."""
        if self.train is not None:
            self.train.close()


def run_case(case: Case, root: Path) -> dict[str, Any]:
    """Warm up every mode, then time them in turns; the figures and peak memory."""
    import keras

    out: dict[str, Any] = {"backend": keras.backend.backend()}
    trainers: dict[str, Trainer] = {}
    warmup: dict[str, Epoch] = {}
    for mode in PIPELINES:  # the pipelines first, so their peak comes before the numpy copy
        trainers[mode] = Trainer(case, mode, root)
        warmup[mode] = trainers[mode].epoch()
    out["pipeline_peak_rss_mb"] = peak_rss_mb()
    trainers[IN_MEMORY] = Trainer(case, IN_MEMORY, root)
    warmup[IN_MEMORY] = trainers[IN_MEMORY].epoch()
    out["cache"] = {
        mode: {"mb": round(t.train.cache_bytes / 2**20, 1), "samples": t.train.cached}
        for mode, t in trainers.items()
        if t.train is not None
    }
    epochs: dict[str, list[Epoch]] = {mode: [] for mode in MODES}
    for r in range(case.rounds):
        for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:  # rotate the order
            epochs[mode].append(trainers[mode].epoch())
    for t in trainers.values():
        t.close()
    out["peak_rss_mb"] = peak_rss_mb()
    in_memory = trainers[IN_MEMORY]
    assert in_memory.x is not None
    out["in_memory_array_mb"] = round(in_memory.x.nbytes / 2**20, 1)
    out["in_memory_prep_s"] = round(in_memory.prep_s, 2)
    out["pipeline_defaults"] = {
        "workers": trainers["pipeline"].train.workers,
        "use_multiprocessing": trainers["pipeline"].train.use_multiprocessing,
        "decode_threads": trainers["pipeline"].train.decode_threads,
    }
    out["first_batch_s_warmup"] = {m: round(e.first_batch_s, 2) for m, e in warmup.items()}
    out["warmup_img_s"] = {m: round(e.img_s, 2) for m, e in warmup.items()}
    out["modes"] = {
        mode: {
            "img_s": round(sum(e.images for e in es) / sum(e.seconds for e in es), 2),
            "epochs_img_s": [round(e.img_s, 2) for e in es],
            "cpu_ms_per_step": round(
                sum(e.cpu_s for e in es) / sum(e.images for e in es) * case.batch_size * 1e3, 2
            ),
            "first_batch_s": round(statistics.median(e.first_batch_s for e in es), 3),
            "final_loss": round(es[-1].loss, 4),
        }
        for mode, es in epochs.items()
    }
    return out


# --------------------------------------------------------------------------- child: profile


def _per_call_us(fn: Callable[[int], object], n: int) -> float:
    """Mean microseconds of ``fn(i)`` over ``i`` in range(n)."""
    timer = Timer()
    for i in range(n):
        fn(i)
    return timer.seconds / n * 1e6


def run_profile(case: Case, root: Path) -> dict[str, Any]:
    """``ShardedDataset.__getitem__`` alone (no model running), and its stages per sample."""
    from digits import dataset
    from digits.dataset import ShardReader, decode_sample
    from train_service.data import ShardedDataset

    ds = dataset.open(str(root))
    kw = {"shuffle": True, "seed": 0, "mean": MEAN, "scale": SCALE, "training": True}
    bs = case.batch_size
    out: dict[str, Any] = {}
    batches = min(case.steps_per_epoch, 40 if case.model == "lenet" else 10)
    for label, threads in (("default", 0), ("1_thread", 1), ("cached", 0)):
        with ShardedDataset(ds, STAGE, bs, decode_threads=threads, **kw) as sd:
            sd[0]  # open the shards, start the pool
            for b in range(batches if label == "cached" else 0):
                sd[b]  # decoded once: the timed pass reads the cache
            timer = Timer()
            for b in range(batches):
                sd[b]
            ms = timer.seconds / batches * 1e3
        out[f"getitem_ms_{label}"] = round(ms, 3)
        out[f"getitem_img_s_{label}"] = round(bs / ms * 1e3, 1)
    # Per-sample stages, serial, on the first shard's samples.
    n = min(case.shard_size, 512 if case.model == "lenet" else 48)
    with ShardReader(ds.shard_paths(STAGE)[0]) as reader:
        raw = [data for _, data in zip(range(n), reader.raw(), strict=False)]
        get_us = _per_call_us(reader.get, n)
    decoded = [decode_sample(r)[0] for r in raw]
    feats = [f.astype(np.float32) for f in decoded]
    with ShardedDataset(ds, STAGE, bs, decode_threads=1, **kw) as sd:
        mean = sd.mean_array
        assert mean is not None
        sd.sample((0, 0, 0))
        stages = {
            "lmdb_get_and_decode": get_us,
            "decode": _per_call_us(lambda i: decode_sample(raw[i]), n),
            "astype_float32": _per_call_us(lambda i: decoded[i].astype(np.float32), n),
            "rng": _per_call_us(lambda i: np.random.default_rng([0, 0, i // bs, i % bs]), n),
            "mean_subtract": _per_call_us(lambda i: feats[i][None].__isub__(mean), n),
            "scale": _per_call_us(lambda i: feats[i][None].__imul__(np.float32(SCALE)), n),
            "sample_total": _per_call_us(lambda i: sd.sample((i, i // bs, i % bs)), n),
        }
        stages["lmdb_get"] = stages["lmdb_get_and_decode"] - stages["decode"]
        xs = [sd.sample((i, 0, i))[0] for i in range(bs)]
        stack_us = _per_call_us(lambda i: np.stack(xs), 20)
    out["per_sample_us"] = {k: round(v, 2) for k, v in stages.items()}
    out["per_batch_us"] = {"stack": round(stack_us, 1)}
    out["encoded_bytes_per_sample"] = round(statistics.fmean(len(r) for r in raw))
    return out


def child(spec: dict[str, Any]) -> int:
    """Run the fits or the profile of the case described by ``spec``; print its JSON line."""
    case = Case(**{**spec["case"], "shape": tuple(spec["case"]["shape"])})
    root = Path(spec["root"])
    return emit(run_profile(case, root) if spec["profile"] else run_case(case, root))


# --------------------------------------------------------------------------- parent


def spawn(case: Case, root: Path, profile: bool = False) -> dict[str, Any]:
    """Run one case's fits (or its profile) in a fresh Python process; its JSON result."""
    spec = {"case": dataclasses.asdict(case), "root": str(root), "profile": profile}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    return run_json(argv, f"case {root.name}", CHILD_TIMEOUT_S, env)


def summarize(key: str, case: Case, root: Path, r: dict[str, Any]) -> dict[str, Any]:
    """The per-case JSON figures from a child's result; readable lines on stderr."""
    modes = r["modes"]
    base = modes[IN_MEMORY]["img_s"]
    pipe, pipe2 = modes["pipeline"]["img_s"], modes["pipeline_workers2"]["img_s"]
    nocache = modes["pipeline_nocache"]["img_s"]
    base_epochs = modes[IN_MEMORY]["epochs_img_s"]
    warm = r["warmup_img_s"]
    fig: dict[str, Any] = {
        "pipeline_img_s": pipe,
        "pipeline_workers2_img_s": pipe2,
        "pipeline_nocache_img_s": nocache,
        "in_memory_img_s": base,
        "ratio": ratio(pipe, base),
        "ratio_workers2": ratio(pipe2, base),
        "ratio_nocache": ratio(nocache, base),
        "ratio_first_epoch": ratio(warm["pipeline"], warm[IN_MEMORY]),
        # Less swayed by other work on a shared machine than wall time: CPU per step.
        "ratio_cpu": ratio(
            modes[IN_MEMORY]["cpu_ms_per_step"], modes["pipeline"]["cpu_ms_per_step"]
        ),
        "warmup_img_s": warm,
        "cache": r["cache"],
        "warmup_epochs": 1,
        "measured_epochs": case.rounds,
        "ratio_per_round": ratios(modes["pipeline"]["epochs_img_s"], base_epochs),
        "ratio_median_round": round(
            statistics.median(
                p / b for p, b in zip(modes["pipeline"]["epochs_img_s"], base_epochs, strict=True)
            ),
            3,
        ),
        "ratio_workers2_per_round": ratios(modes["pipeline_workers2"]["epochs_img_s"], base_epochs),
        "batch_size": case.batch_size,
        "steps": case.measured_steps,
        "steps_per_epoch": case.steps_per_epoch,
        "rounds": case.rounds,
        "samples": case.count,
        "shard_size": case.shard_size,
        "input_shape": list(case.shape),
        "dataset_mb": _disk_mb(root),
        "pipeline_defaults": r["pipeline_defaults"],
        "epochs_img_s": {m: v["epochs_img_s"] for m, v in modes.items()},
        "cpu_ms_per_step": {m: v["cpu_ms_per_step"] for m, v in modes.items()},
        "first_batch_s": {m: v["first_batch_s"] for m, v in modes.items()},
        "first_batch_s_warmup": r["first_batch_s_warmup"],
        "final_loss": {m: v["final_loss"] for m, v in modes.items()},
        "in_memory_prep_s": r["in_memory_prep_s"],
        "in_memory_array_mb": r["in_memory_array_mb"],
        "pipeline_peak_rss_mb": r["pipeline_peak_rss_mb"],
        "peak_rss_mb": r["peak_rss_mb"],
        "backend": r["backend"],
    }
    for mode, v in modes.items():
        rates = ", ".join(f"{x:.1f}" for x in v["epochs_img_s"])
        say(
            f"{key:14s} {mode:18s} {v['img_s']:9.1f} img/s  (epochs: {rates}; "
            f"CPU {v['cpu_ms_per_step']:.1f} ms/step; first batch {v['first_batch_s']:.2f} s)"
        )
    say(
        f"{key:14s} ratio {fig['ratio']:.3f} (workers=2: {fig['ratio_workers2']:.3f}, "
        f"no cache: {fig['ratio_nocache']:.3f}; first epoch {fig['ratio_first_epoch']:.3f}), goal "
        f">= {GOAL_RATIO}; peak {fig['pipeline_peak_rss_mb']:.0f} MiB with the pipelines, "
        f"{fig['peak_rss_mb']:.0f} MiB with the {fig['in_memory_array_mb']:.0f} MiB numpy copy"
    )
    prof = r.get("getitem_profile")
    if prof:
        fig["getitem_profile"] = prof
        stages = ", ".join(f"{k} {v:.1f}" for k, v in prof["per_sample_us"].items())
        say(
            f"{key:14s} __getitem__ alone: {prof['getitem_ms_default']:.2f} ms/batch "
            f"({prof['getitem_img_s_default']:.0f} img/s; cached "
            f"{prof['getitem_img_s_cached']:.0f} img/s; 1 thread "
            f"{prof['getitem_img_s_1_thread']:.0f} img/s); per sample (us): {stages}"
        )
    return fig


def run(names: list[str], encodings: list[str], quick: bool, profile: bool) -> dict[str, Any]:
    """Write the datasets, run every case, return the figures."""
    table = QUICK_CASES if quick else CASES
    cases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="digits-bench-train-") as tmp:
        for name in names:
            case = table[name]
            timer = Timer()
            roots = write_datasets(case, name, Path(tmp))
            say(
                f"{name}: wrote {case.count} {'x'.join(map(str, case.shape))} samples "
                f"(png {_disk_mb(roots['png'])} MiB, none {_disk_mb(roots['none'])} MiB) "
                f"in {timer.seconds:.1f} s"
            )
            for enc in encodings:
                key = f"{name}_{enc}"
                result = spawn(case, roots[enc])
                if profile:
                    result["getitem_profile"] = spawn(case, roots[enc], profile=True)
                cases[key] = summarize(key, case, roots[enc], result)
    backend = next(iter(cases.values()))["backend"] if cases else "unknown"
    peak = max([peak_rss_mb(), *(c["peak_rss_mb"] for c in cases.values())])
    return {
        "bench": "train",
        "quick": quick,
        "cases": cases,
        "goal": {
            "ratio_min": GOAL_RATIO,
            "met": {k: c["ratio"] >= GOAL_RATIO for k, c in cases.items()},
            "met_workers2": {k: c["ratio_workers2"] >= GOAL_RATIO for k, c in cases.items()},
            "met_nocache": {k: c["ratio_nocache"] >= GOAL_RATIO for k, c in cases.items()},
        },
        "service_default": (
            "pipeline_img_s is ShardedDataset as train_service/session.py builds it (PyDataset "
            "workers=1, no multiprocessing, decode_threads=os.cpu_count()); "
            "pipeline_workers2_img_s adds workers=2 (two Keras prefetch threads); "
            "pipeline_nocache_img_s turns the decoded-sample cache off (cache_mb=0)"
        ),
        "timing": (
            "each mode trains one epoch per model.fit call, in turns, after a warm-up epoch "
            "(it fills the cache; reported as warmup_img_s and ratio_first_epoch, not in ratio); "
            "the ratios average the measured_epochs steady-state epochs per mode; img/s counts "
            "every epoch's batches after its first; first_batch_s is that "
            "first batch's latency from the fit call (Keras's per-fit setup included); "
            "cpu_ms_per_step is the process's CPU time (all threads) per timed step"
        ),
        "peak_rss_mb": peak,
        "backend": backend,
        "machine": machine("tensorflow", "keras", "numpy", "pillow", "lmdb"),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark (or one child case), print the JSON line."""
    parser = arguments(__doc__, "small datasets, few steps")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument(
        "--encodings", default=",".join(ENCODINGS), help="comma-separated subset of png,none"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the __getitem__ profile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if not names or any(n not in CASES for n in names):
        parser.error(f"--cases: choose from {', '.join(CASES)}")
    if not encodings or any(e not in ENCODINGS for e in encodings):
        parser.error(f"--encodings: choose from {', '.join(ENCODINGS)}")
    timer = start()
    return finish(run(names, encodings, args.quick, not args.no_profile), timer)


if __name__ == "__main__":
    sys.exit(main())
