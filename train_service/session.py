"""One training run in a worker thread: build or resume, fit, report, snapshot, checkpoint.

This module imports Keras; the service imports it only when a training job arrives.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras

from digits import events
from digits.jobs import Job
from digits.models.layout import INFO, LABELS, NETWORK, snapshot_name
from digits.models.options import TrainOptions
from train_service.devices import Plan
from train_service.tasks import CLASSIFICATION_SCALE

log = logging.getLogger(__name__)

SCALE = CLASSIFICATION_SCALE  # classification pixels (after the mean) are scaled to about -1..1


class SessionBridge(Protocol):
    """What the training thread may do on the event loop: ``train_service.trainer.Bridge``."""

    def publish(self, event: events.Event) -> None:
        """Publish without waiting; a bus outage never stops training."""
        ...

    def put_file(self, key: str, path: Path) -> str:
        """Store a file under the model's folder; its URL."""
        ...

    def get_file(self, key: str, path: Path) -> bool:
        """Fetch a file of the model's folder, if it exists."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store bytes under the model's folder."""
        ...

    def record(self, **extra: Any) -> None:
        """Merge fields into the job record's extra; failures are logged, not raised."""
        ...


@dataclass
class Result:
    """How a run ended."""

    epochs: float
    snapshots: list[float]
    metrics: dict[str, float]
    aborted: bool = False


@dataclass
class State:
    """What a checkpoint remembers besides the model and optimizer: where training stood."""

    epoch: int = 0
    snapshots: list[float] = field(default_factory=list)
    best_val_loss: float | None = None
    bad_validations: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class TrainSession:
    """Runs ``model.fit`` for one job; talks to the bus and the store only through the bridge."""

    def __init__(
        self,
        *,
        job: Job,
        options: TrainOptions,
        manifest_url: str,
        bridge: SessionBridge,
        stop: threading.Event,
        cache_dir: Path,
        previous: Path | None = None,
        plan: Plan | None = None,
        sample_cache_mb: float | None = None,
    ) -> None:
        self.job = job
        self.options = options
        self.manifest_url = manifest_url
        self.bridge = bridge
        self.stop = stop
        self.cache_dir = cache_dir
        self.previous = previous
        self.plan = plan or Plan((), (), explicit=False)
        self.replaced_head: str | None = None
        self.sample_cache_mb = sample_cache_mb
        self._started = time.perf_counter()  # the setup steps are logged from here
        self.saved_model: dict[str, Any] | None = None  # the SavedModel export, if any

    def run(self) -> Result:
        """Train to the end (or the abort); a crash resumes from the last epoch's checkpoint."""
        from digits import dataset as datasets
        from train_service import data, devices, export, tasks

        opts = self.options
        self.mark("run began")  # late if the event loop's threads were all taken
        dataset_id = self.job.depends_on[0]
        dataset = datasets.open(
            self.manifest_url, cache_dir=self.cache_dir / "datasets" / dataset_id
        )
        self.mark("dataset opened")
        if opts.seed is not None:
            keras.utils.set_random_seed(opts.seed)
        self.task = tasks.detect(dataset, opts.form)
        augment = data.Augment.from_form(opts.form)
        common = {"mean": self.task.mean, "crop_size": opts.crop_size, "scale": self.task.scale}
        budget = data.DEFAULT_CACHE_MB if self.sample_cache_mb is None else self.sample_cache_mb
        train = data.ShardedDataset(
            dataset,
            "train_db",
            opts.batch_size,
            shuffle=opts.shuffle,
            seed=opts.seed or 0,
            augment=augment,
            training=True,
            cache_mb=budget,
            **common,
        )
        val = None
        if "val_db" in dataset.stages and dataset.count("val_db"):
            # One budget for both stages: validation gets what training left.
            left = max(0.0, budget - train.cache_bytes / 2**20)
            val = data.ShardedDataset(
                dataset,
                "val_db",
                opts.batch_size,
                shuffle=False,
                training=False,
                cache_mb=left,
                **common,
            )
        log.info(
            "job %s caches %.1f MiB of decoded samples (budget %g MiB)",
            self.job.id,
            (train.cache_bytes + (val.cache_bytes if val is not None else 0)) / 2**20,
            budget,
        )
        steps_per_epoch = len(train)
        total_steps = max(1, math.ceil(opts.epochs * steps_per_epoch))
        strategy = devices.strategy(self.plan)
        self.replicas = int(strategy.num_replicas_in_sync)
        self.bridge.record(
            devices=list(self.plan.names),
            num_replicas_in_sync=self.replicas,
            backend=keras.backend.backend(),
        )
        self.mark("input pipelines ready")
        with tempfile.TemporaryDirectory(prefix="digits-train-") as tmp:
            with strategy.scope():  # variables (model and optimizer) live on the chosen devices
                model, state = self._model(Path(tmp), dataset, total_steps)
            self.mark("model built")
            callback = Reporter(self, Path(tmp), steps_per_epoch, total_steps, val, state)
            if state.epoch * steps_per_epoch < total_steps:
                train.set_epoch(state.epoch)  # a resumed run sees the same order as an unbroken one
                model.fit(
                    train,
                    epochs=math.ceil(opts.epochs),
                    initial_epoch=state.epoch,
                    callbacks=[callback],
                    shuffle=False,  # the dataset shuffles, seeded; Keras's shuffle is not
                    verbose=0,
                )
            aborted = self.stop.is_set() and callback.step < total_steps
            final = round(callback.step / steps_per_epoch, 4)
            if not aborted and (not state.snapshots or state.snapshots[-1] < final):
                callback.snapshot(final)
            if not aborted:  # the model now is the last snapshot's: export that one
                self.saved_model = export.saved_model(model, Path(tmp), self.bridge)
                if self.saved_model is not None:
                    self.saved_model["epoch"] = final
            self._write_info(model, dataset, state, final)
        for stage in (train, val):  # the cache's memory and the shard files go back now
            if stage is not None:
                stage.close()
        return Result(final, list(state.snapshots), dict(state.metrics), aborted)

    def mark(self, step: str) -> None:
        """Log a setup step with the seconds since the session was made: where a slow start went."""
        log.info("job %s: %s after %.2f s", self.job.id, step, time.perf_counter() - self._started)

    def _model(self, tmp: Path, dataset: Any, total_steps: int) -> tuple[Any, State]:
        from train_service import data, lr_policy, networks, solvers, tasks

        opts = self.options
        checkpoint = tmp / "checkpoint.keras"
        state_path = tmp / "state.json"
        if self.bridge.get_file("checkpoint/state.json", state_path) and self.bridge.get_file(
            "checkpoint/model.keras", checkpoint
        ):
            state = State(**json.loads(state_path.read_text()))
            log.info("job %s resumes after epoch %d", self.job.id, state.epoch)
            return keras.models.load_model(checkpoint), state
        task = self.task
        shape = data.input_shape(dataset, opts.crop_size)
        classes = task.outputs
        if opts.method == "custom" and opts.custom_network_type == "python":
            model = networks.from_python(
                opts.custom_network, shape, classes, allowed=opts.allow_python
            )
        elif opts.method == "custom":
            model = networks.from_json(opts.custom_network)
        elif opts.method in ("previous", "pretrained") and self.previous is not None:
            from train_service import finetune

            model = keras.models.load_model(self.previous, compile=False)
            finetune.check_inputs(model, shape)
            model, self.replaced_head = finetune.replace_head(model, classes)
        else:
            model = networks.build_network(task.network, shape, classes)
        tasks.check_model(model, task)
        schedule = lr_policy.schedule_from_form(opts.form, total_steps)
        optimizer = solvers.make_optimizer(
            opts.solver, schedule, accumulation_steps=opts.batch_accumulation
        )
        if task.kind == "regression":
            loss, metrics = keras.losses.MeanSquaredError(), ["mae"]
        else:  # per image or, for segmentation, per pixel (accuracy is then pixel accuracy)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            metrics = ["accuracy"]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        return model, State()

    def _write_info(self, model: Any, dataset: Any, state: State, epochs: float) -> None:
        opts = self.options
        info = {
            "job_id": self.job.id,
            "name": self.job.name,
            "dataset_id": self.job.depends_on[0],
            "dataset_manifest": self.manifest_url,
            "network": self.task.network if opts.method == "standard" else opts.method,
            "task": self.task.kind,
            "outputs": self.task.outputs,
            "label_shape": list(self.task.label_shape),
            "feature_dtype": dataset.manifest.feature_dtype,
            "input_shape": list(model.input_shape[1:]),
            "labels": list(dataset.labels),
            "mean": self.task.mean,
            "scale": self.task.scale,
            "crop_size": opts.crop_size,
            "epochs": epochs,
            "snapshots": state.snapshots,
            "metrics": state.metrics,
            "devices": list(self.plan.names),
            "num_replicas_in_sync": self.replicas,
            "backend": keras.backend.backend(),
            "saved_model": self.saved_model,
        }
        if opts.method in ("previous", "pretrained"):
            info["started_from"] = {
                "model": opts.previous_job,
                "archive": opts.pretrained_archive,
                "snapshot": self.previous.name if self.previous else None,
                "replaced_head": self.replaced_head,
            }
        self.bridge.put_bytes(INFO, json.dumps(info, indent=2).encode())
        self.bridge.put_bytes(NETWORK, model.to_json().encode())
        self.bridge.put_bytes(LABELS, "\n".join(dataset.labels).encode())


class Reporter(keras.callbacks.Callback):
    """Keras callback: progress events, snapshots, validation, abort, checkpoints."""

    def __init__(
        self,
        session: TrainSession,
        tmp: Path,
        steps_per_epoch: int,
        total_steps: int,
        val: Any,
        state: State,
    ) -> None:
        super().__init__()
        opts = session.options
        self.session = session
        self.tmp = tmp
        self.spe = steps_per_epoch
        self.total = total_steps
        self.val = val
        self.state = state
        self.step = state.epoch * steps_per_epoch
        self.first_step = self.step + 1  # this run's (a resumed run starts past the first epochs)
        self.report_every = max(1, steps_per_epoch // 4)
        self.snap_every = max(1, round(opts.snapshot_interval * steps_per_epoch))
        self.val_every = max(1, round(opts.val_interval * steps_per_epoch))
        self.snapshots_on = opts.snapshot_interval > 0
        self.val_on = val is not None and opts.val_interval > 0
        self.batch_size = opts.batch_size
        self._t = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """After each batch: report, snapshot, validate, stop when done or aborted."""
        self.step += 1
        if self.step == self.first_step:
            self.session.mark("first batch trained")
        self._images += self.batch_size
        epoch = round(self.step / self.spe, 4)
        if self.step % self.report_every == 0 or self.step == self.total:
            elapsed = max(time.perf_counter() - self._t, 1e-9)
            self.session.bridge.publish(
                events.TrainProgress(
                    job_id=self.session.job.id,
                    epoch=epoch,
                    step=self.step,
                    metrics={k: float(v) for k, v in (logs or {}).items()},
                    learning_rate=self._lr(),
                    images_per_s=round(self._images / elapsed, 1),
                )
            )
            self._t, self._images = time.perf_counter(), 0
        if self.val_on and (self.step % self.val_every == 0 or self.step == self.total):
            self.validate(epoch)
        if self.snapshots_on and self.step % self.snap_every == 0 and self.step < self.total:
            self.snapshot(epoch)
        if self.step >= self.total or self.session.stop.is_set():
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Checkpoint model, optimizer and position, so a crashed worker resumes here."""
        if self.session.stop.is_set():
            return
        self.state.epoch = epoch + 1
        path = self.tmp / "checkpoint.keras"
        self.model.save(path)
        self.session.bridge.put_file("checkpoint/model.keras", path)
        state = json.dumps(self.state.__dict__).encode()
        self.session.bridge.put_bytes("checkpoint/state.json", state)

    def validate(self, epoch: float) -> None:
        """Evaluate on the validation set; early stopping counts validations without progress."""
        result = self.model.evaluate(self.val, verbose=0, return_dict=True)
        metrics = {f"val_{k}": float(v) for k, v in result.items()}
        self.state.metrics.update(metrics)
        self.session.bridge.publish(
            events.TrainProgress(
                job_id=self.session.job.id,
                phase="val",
                epoch=epoch,
                step=self.step,
                metrics=metrics,
            )
        )
        patience = self.session.options.early_stopping
        loss = metrics.get("val_loss")
        if loss is None or not patience:
            return
        if self.state.best_val_loss is None or loss < self.state.best_val_loss:
            self.state.best_val_loss, self.state.bad_validations = loss, 0
        else:
            self.state.bad_validations += 1
            if self.state.bad_validations >= patience:
                log.info("job %s: early stop at epoch %g", self.session.job.id, epoch)
                self.total = self.step

    def snapshot(self, epoch: float) -> None:
        """Store the model at ``epoch`` and announce it."""
        name = snapshot_name(epoch)
        path = self.tmp / name
        self.model.save(path)
        url = self.session.bridge.put_file(f"snapshots/{name}", path)
        path.unlink(missing_ok=True)
        self.state.snapshots.append(epoch)
        self.session.bridge.record(snapshots=list(self.state.snapshots))
        self.session.bridge.publish(
            events.SnapshotSaved(job_id=self.session.job.id, epoch=epoch, url=url)
        )

    def _lr(self) -> float | None:
        try:
            return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # noqa: BLE001 - a custom optimizer without a readable rate
            return None
