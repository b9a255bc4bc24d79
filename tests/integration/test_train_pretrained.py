"""Pretrained model archives: checked member by member, then fine-tuned on another dataset.

The archive is built here in the download route's layout (gateway/models_api.py streams it from a
Flask view, so there is no builder to import): epoch-N.keras, network.json, info.json, labels.txt
and the dataset's mean files, flat, in a .tar.gz.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from digits import jobs
from digits.download_data import synthetic
from digits.models import archive
from digits.store import FileStore
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_train import DATASET_FORM, LENET, create_model

pytestmark = pytest.mark.timeout(180)


def build_archive(store_root: Path, model: jobs.Job, epochs: list[float], out: Path) -> Path:
    """The model download's archive of ``model`` at ``epochs``, from its stored files."""
    folder = store_root / "models" / model.id
    entries = [(name, folder / name) for name in ("info.json", "labels.txt", "network.json")]
    entries += [(f"epoch-{e:g}.keras", folder / "snapshots" / f"epoch-{e:g}.keras") for e in epochs]
    mean = store_root / "datasets" / model.depends_on[0]
    entries += [(name, mean / name) for name in ("mean.npy", "mean.png") if (mean / name).exists()]
    with tarfile.open(out, "w:gz") as tar:
        for name, path in entries:
            tar.add(path, arcname=name, recursive=False)
    return out


def evil_archive(out: Path, name: str = "../x", kind: bytes = tarfile.REGTYPE) -> Path:
    """A .tar.gz with a snapshot and one bad member."""
    with tarfile.open(out, "w:gz") as tar:
        for member_name in ("epoch-1.keras", name):
            info = tarfile.TarInfo(member_name)
            info.type = kind if member_name == name else tarfile.REGTYPE
            info.linkname = "/etc/passwd" if info.type == tarfile.SYMTYPE else ""
            data = b"" if info.type == tarfile.SYMTYPE else b"x"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def conv1(path: Path) -> np.ndarray:
    """The first convolution's kernel of a stored snapshot."""
    import keras

    return keras.models.load_model(path, compile=False).get_layer("conv1").get_weights()[0]


async def put(store_root: Path, path: Path) -> str:
    """Put a file under uploads/pretrained/ of the file store, as the gateway does; its key."""
    key = f"uploads/pretrained/{uuid.uuid4().hex}.tar.gz"
    async with FileStore(store_root) as store:
        await store.put_file(key, path)
    return key


async def test_a_pretrained_archive_is_fine_tuned_with_a_new_head(nats_server, nc, stack, tmp_path):
    await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service"), asyncio.to_thread(stack, "train_service")
    )
    for name, classes in (("five", 5), ("three", 3)):
        synthetic.generate(tmp_path / name, classes=classes, per_class=40, size=28, seed=classes)
        form = {**DATASET_FORM, "folder_train": str(tmp_path / name / "train")}
        await create_dataset(nats_server.url, name, form)
    five = await finished_job(nc, "five", timeout=90)
    three = await finished_job(nc, "three", timeout=90)
    assert five.status == three.status == jobs.DONE, (five.error, three.error)
    await create_model(nats_server.url, "base", five.id, {**LENET, "train_epochs": 2})
    base = await finished_job(nc, "base", timeout=120)
    assert base.status == jobs.DONE, base.error
    assert base.extra["snapshots"] == [2]
    store_root = tmp_path / "store"
    built = build_archive(store_root, base, [2], tmp_path / "base.tar.gz")
    key = await put(store_root, built)
    start = conv1(store_root / "models" / base.id / "snapshots" / "epoch-2.keras")

    # Learning rate 0: the kept layers end exactly where the archive's snapshot starts them.
    frozen = {
        **LENET,
        "method": "pretrained",
        "pretrained_archive": key,
        "train_epochs": 1,
        "solver_type": "SGD",
        "learning_rate": 0,
    }
    await create_model(nats_server.url, "frozen", three.id, frozen)
    tuned = await finished_job(nc, "frozen", timeout=90)
    assert tuned.status == jobs.DONE, tuned.error
    info = json.loads((store_root / "models" / tuned.id / "info.json").read_text())
    assert info["outputs"] == 3 and info["network"] == "pretrained"
    assert info["started_from"]["archive"] == key
    assert info["started_from"]["snapshot"] == "epoch-2.keras"
    assert info["started_from"]["replaced_head"] == "ip2"
    snapshot = store_root / "models" / tuned.id / "snapshots" / "epoch-1.keras"
    np.testing.assert_array_equal(conv1(snapshot), start)
    import keras

    assert keras.models.load_model(snapshot, compile=False).output_shape == (None, 3)

    # Real fine-tuning from the archive learns the new classes.
    await create_model(nats_server.url, "tuned", three.id, {**frozen, "learning_rate": 0.002})
    learned = await finished_job(nc, "tuned", timeout=90)
    assert learned.status == jobs.DONE, learned.error
    assert learned.extra["final_metrics"]["val_accuracy"] >= 0.6, learned.extra["final_metrics"]
    assert not np.array_equal(
        conv1(store_root / "models" / learned.id / "snapshots" / "epoch-1.keras"), start
    )

    # A malicious archive, a missing key, a snapshot that is not there: Error, named.
    evil = await put(store_root, evil_archive(tmp_path / "evil.tar.gz"))
    cases = {
        "evil": {"pretrained_archive": evil},
        "absent": {"pretrained_archive": "uploads/pretrained/none.tar.gz"},
        "epoch": {"pretrained_archive": key, "previous_network_snapshot": 7},
    }
    for name, fields in cases.items():
        await create_model(nats_server.url, name, three.id, {**frozen, **fields})
    errors = {name: await finished_job(nc, name, timeout=30) for name in cases}
    assert all(job.status == jobs.ERROR for job in errors.values()), errors
    assert "archive member '../x' points outside the archive" in errors["evil"].error
    assert "'uploads/pretrained/none.tar.gz' is not in the artifact store" in errors["absent"].error
    assert "no snapshot at epoch 7; it has 2" in errors["epoch"].error


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("/etc/x", tarfile.REGTYPE, "'/etc/x' has an absolute or unsafe path"),
        ("a/../../x", tarfile.REGTYPE, "'a/../../x' points outside the archive"),
        ("link", tarfile.SYMTYPE, "'link' is a link, not a file"),
        ("dev", tarfile.CHRTYPE, "'dev' is a special file, not a file"),
    ],
)
def test_unsafe_members_are_refused_by_name(tmp_path, name, kind, message):
    path = evil_archive(tmp_path / "a.tar.gz", name, kind)
    with pytest.raises(archive.ArchiveError, match=message.replace(".", r"\.")):
        archive.extract_snapshot(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_chosen_snapshot_is_extracted_and_non_archives_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        for epoch in ("1", "2.5", "10"):
            (src / f"epoch-{epoch}.keras").write_text(epoch)
            tar.add(src / f"epoch-{epoch}.keras", arcname=f"model/epoch-{epoch}.keras")
    assert archive.extract_snapshot(tmp_path / "m.tar.gz", tmp_path / "a").read_text() == "10"
    got = archive.extract_snapshot(tmp_path / "m.tar.gz", tmp_path / "b", 2.5)
    assert got.name == "epoch-2.5.keras" and got.read_text() == "2.5"
    with pytest.raises(archive.ArchiveError, match="no snapshot at epoch 3; it has 1, 2.5, 10"):
        archive.extract_snapshot(tmp_path / "m.tar.gz", tmp_path / "c", 3)
    (tmp_path / "plain.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(archive.ArchiveError, match="not a readable .tar.gz"):
        archive.extract_snapshot(tmp_path / "plain.tar.gz", tmp_path / "d")
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as tar:
        tar.add(src / "epoch-1.keras", arcname="network.json")
    with pytest.raises(archive.ArchiveError, match="no epoch-N.keras snapshot"):
        archive.extract_snapshot(tmp_path / "empty.tar.gz", tmp_path / "e")


def test_saved_model_members_are_checked_but_never_snapshots(tmp_path):
    src = tmp_path / "epoch-1.keras"
    src.write_text("1")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="epoch-1.keras")
        for name in ("saved_model.pb", "variables/variables.index", "epoch-9.keras"):
            tar.add(src, arcname=f"saved_model/{name}")
    assert sorted(archive.snapshots(tmp_path / "m.tar.gz")) == [1.0]
    got = archive.extract_snapshot(tmp_path / "m.tar.gz", tmp_path / "a")
    assert got.name == "epoch-1.keras" and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "epoch-1.keras"
    ]
    path = evil_archive(tmp_path / "evil.tar.gz", "saved_model/variables", tarfile.SYMTYPE)
    with pytest.raises(archive.ArchiveError, match="'saved_model/variables' is a link"):
        archive.extract_snapshot(path, tmp_path / "b")
