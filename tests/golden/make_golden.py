"""Write a golden .msgpack file for each v1 event that has none yet (never rewrite old ones).

Run ``python -m tests.golden.make_golden`` after adding an event type; commit the new file.
"""

from __future__ import annotations

from pathlib import Path

from digits import events

HERE = Path(__file__).parent
BASE = {"event_id": "0123456789abcdef0123456789abcdef", "occurred_at": 1795737600.25}
JOB = "20261127-000000-beef"

SAMPLES: dict[type[events.Event], dict] = {
    events.DatasetCreate: {
        "name": "mnist",
        "form": {"folder_train": "/data/mnist/train", "resize_width": 28},
        "group": "digits",
        "owner": "alice",
    },
    events.ModelCreate: {"name": "lenet", "dataset_id": JOB, "form": {"train_epochs": 30}},
    events.JobAbort: {"job_id": JOB, "reason": "wrong dataset"},
    events.JobDelete: {"job_id": JOB},
    events.JobEdit: {"job_id": JOB, "name": "mnist (28x28)", "notes": "first try"},
    events.IngestShard: {
        "job_id": JOB,
        "stage": "train_db",
        "shard": 3,
        "shards": 12,
        "entries_key": f"datasets/{JOB}/work/v1/train_db/shard-00003.msgpack",
        "count": 2000,
    },
    events.IngestFinalize: {"job_id": JOB, "version": 1},
    events.DatasetReady: {
        "job_id": JOB,
        "manifest_url": f"file:///data/store/datasets/{JOB}/manifest.json",
        "counts": {"train_db": 45000, "val_db": 15000},
        "skipped": {"train_db": 2, "val_db": 0},
        "num_labels": 10,
    },
    events.DatasetUpdated: {
        "job_id": JOB,
        "manifest_url": f"file:///data/store/datasets/{JOB}/manifest.json",
        "version": 2,
        "added": {"train_db": 120},
        "counts": {"train_db": 45120, "val_db": 15000},
    },
    events.TrainWork: {"job_id": JOB},
    events.TrainProgress: {
        "job_id": JOB,
        "phase": "train",
        "epoch": 1.25,
        "step": 250,
        "metrics": {"loss": 0.31, "accuracy": 0.91},
        "learning_rate": 0.01,
        "images_per_s": 1830.5,
    },
    events.HardwareUsage: {
        "job_id": JOB,
        "cpu_pct": 180.5,
        "memory_bytes": 2147483648,
        "gpus": [{"index": 0.0, "utilization_pct": 97.0, "memory_bytes": 8.0e9, "temp_c": 71.0}],
    },
    events.SnapshotSaved: {
        "job_id": JOB,
        "epoch": 2.0,
        "url": f"file:///data/store/models/{JOB}/snapshots/epoch-2.0.keras",
    },
    events.ModelReady: {
        "job_id": JOB,
        "epochs": 30.0,
        "snapshots": [10.0, 20.0, 30.0],
        "metrics": {"val_loss": 0.05, "val_accuracy": 0.99},
    },
    events.JobStatusChanged: {"job_id": JOB, "job_type": "dataset", "status": "R", "previous": "I"},
    events.StageProgress: {
        "job_id": JOB,
        "stage": "Create DB (train)",
        "status": "R",
        "progress": 0.5,
        "done": 30000,
        "total": 60000,
    },
    events.JobUpdated: {"job_id": JOB, "fields": ["name", "notes"]},
    events.JobDeleted: {"job_id": JOB},
    events.RegistryRegister: {
        "name": "shapes",
        "job_id": "20261126-221210-3f9b",
        "owner": "alice",
        "rule": {"alias": "production", "metric": "val_accuracy", "margin": 0.01},
        "aliases": ["staging"],
    },
    events.RegistryPromote: {
        "name": "shapes",
        "version": 2,
        "alias": "production",
        "owner": "alice",
        "expected": 1,
        "reason": "checked by hand",
    },
    events.RegistrySet: {
        "name": "shapes",
        "owner": "alice",
        "rule": {"margin": 0.02},
        "follow": {"min_new_samples": 50},
    },
    events.RegistryChanged: {
        "name": "shapes",
        "kind": "promoted",
        "version": 2,
        "alias": "production",
        "previous": 1,
        "job_id": "20261126-221210-3f9c",
        "by": "rule",
        "reason": "v2 val_accuracy=0.91 beats v1's 0.85",
    },
    events.CommandRejected: {
        "command_type": "job.delete",
        "command_id": "fedcba9876543210fedcba9876543210",
        "reason": "used by lenet",
        "job_id": JOB,
    },
    events.Heartbeat: {"service": "ingest", "instance": "node-1-42-ab12", "pid": 42},
}


def main() -> None:
    """Write the missing fixtures."""
    for cls, fields in SAMPLES.items():
        path = HERE / f"{events.tag_of(cls)}.msgpack"
        if not path.exists():
            path.write_bytes(events.encode(cls(**BASE, **fields)))
            print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
