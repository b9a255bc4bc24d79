"""digits.download_data against a local HTTP server serving tiny fake archives, and synthetic."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from digits.download_data import MIRROR_ENV, DataError, cifar10, mnist, synthetic
from digits.download_data.__main__ import main
from digits.natsserver import free_port

HINT = "are you offline? use `synthetic` for an offline set"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---------------------------------------------------------------- fake archives


def idx(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes holding ``array``."""
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return bytes([0, 0, 8, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def fake_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """Write the four gzipped idx files; return the arrays."""
    rng = np.random.default_rng(1)
    arrays = {}
    for phase, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (root / f"{phase}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images)))
        (root / f"{phase}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(labels)))
        arrays[phase] = images
    return arrays


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _batch(rng: np.random.Generator, n: int, start: int, labels: dict[str, int]) -> dict:
    """A batch as the real (Python 2) pickles load with encoding="bytes": bytes keys and names."""
    batch = {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_s_{start + i:06d}.png".encode() for i in range(n)],
    }
    for key, count in labels.items():
        batch[key.encode()] = [int(x) for x in (np.arange(start, start + n) % count)]
    return batch


def fake_cifar10(root: Path, per_batch: int = 4, n_test: int = 5) -> dict[str, dict]:
    """Write cifar-10-python.tar.gz with five small training batches and a test batch."""
    rng = np.random.default_rng(2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    batches = {
        f"data_batch_{i}": _batch(rng, per_batch, (i - 1) * per_batch, {"labels": 10})
        for i in range(1, 6)
    }
    batches["test_batch"] = _batch(rng, n_test, 0, {"labels": 10})
    # One batch with str keys, as a Python 3 pickle would have them.
    batches["data_batch_5"] = {k.decode(): v for k, v in batches["data_batch_5"].items()}
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        _add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name, batch in batches.items():
            _add(tf, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    return batches


def fake_cifar100(root: Path) -> None:
    """Write cifar-100-python.tar.gz with 4 fine labels in 2 coarse ones."""
    rng = np.random.default_rng(3)
    meta = {b"fine_label_names": [b"apple", b"bee", b"cloud", b"dolphin"]}
    meta[b"coarse_label_names"] = [b"fruit", b"other"]
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tf:
        _add(tf, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
        for phase, n in (("train", 8), ("test", 4)):
            batch = _batch(rng, n, 0, {"fine_labels": 4, "coarse_labels": 2})
            _add(tf, f"cifar-100-python/{phase}", pickle.dumps(batch, protocol=2))


def read_image(path: str | Path) -> PIL.Image.Image:
    """The image at ``path``, loaded (and the file closed)."""
    with PIL.Image.open(path) as image:
        image.load()
        return image


def lines(path: Path) -> list[list[str]]:
    """The ``path label`` lines of a text file, split."""
    return [line.rsplit(" ", 1) for line in path.read_text().splitlines()]


def check_layout(root: Path, labels: list[str], counts: dict[str, int]) -> None:
    """labels.txt, <phase>/<label>/<nnnnn>.png and <phase>.txt agree with each other."""
    assert (root / "labels.txt").read_text().splitlines() == labels
    for phase, count in counts.items():
        pngs = sorted((root / phase).glob("*/*.png"))
        assert len(pngs) == count
        listed = lines(root / f"{phase}.txt")
        assert len(listed) == count
        for i, (path, label) in enumerate(listed):
            image = Path(path)
            assert image.is_absolute() and image.is_file()
            assert image.parent.name == labels[int(label)]
            assert image.parent.parent == root / phase
            assert image.name == f"{i:05d}.png"


# ---------------------------------------------------------------- mnist


def test_mnist(www: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    served, url = www
    arrays = fake_mnist(served)
    out = tmp_path / "mnist"
    assert main(["mnist", str(out), "--mirror", url]) == 0
    assert "Downloading url=" + url + "train-images-idx3-ubyte.gz" in capsys.readouterr().out
    check_layout(out, [str(d) for d in range(10)], {"train": 20, "test": 10})
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]
    # DIGITS stores MNIST inverted: black digits on white.
    image = np.array(read_image(out / "train" / "3" / "00003.png"))
    assert image.shape == (28, 28) and np.array_equal(image, 255 - arrays["train"][3])
    # The archives stay, so a second run needs no network (the mirror is gone) and starts over.
    (out / "train" / "3" / "stray.png").write_bytes(b"x")
    assert main(["mnist", str(out), "--mirror", "http://127.0.0.1:9/"]) == 0
    assert "Using downloaded file" in capsys.readouterr().out
    check_layout(out, [str(d) for d in range(10)], {"train": 20, "test": 10})


def test_mirror_from_env(
    www: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = www
    fake_mnist(served, n_train=10, n_test=10)
    monkeypatch.setenv(MIRROR_ENV, url)
    info = mnist.download(tmp_path / "m")
    assert info.counts == {"train": 10, "test": 10} and info.labels == [str(d) for d in range(10)]


def test_clean(www: tuple[Path, str], tmp_path: Path) -> None:
    served, url = www
    fake_mnist(served)
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert main(["mnist", str(out), "--clean", "--mirror", url]) == 0
    assert not (out / "old.txt").exists()


def test_parse_idx_rejects_garbage() -> None:
    with pytest.raises(DataError, match="not an idx file"):
        mnist.parse_idx(b"garbage!")
    with pytest.raises(DataError, match="holds 3 bytes"):
        mnist.parse_idx(idx(np.zeros((2, 2), np.uint8))[:-1])


def test_corrupt_archive(
    www: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    served, url = www
    fake_mnist(served)
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    assert main(["mnist", str(tmp_path / "m"), "--mirror", url]) == 1
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz is not a readable gzip file" in err and "--clean" in err
    (served / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"\0" * 100))
    assert main(["cifar10", str(tmp_path / "c"), "--mirror", url]) == 1
    assert "cifar-10-python.tar.gz is not a readable tarball" in capsys.readouterr().err


# ---------------------------------------------------------------- offline / unreachable


def test_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/mnist/"
    assert main(["mnist", str(tmp_path / "m"), "--mirror", url]) == 1
    err = capsys.readouterr().err
    assert f"cannot download {url}train-images-idx3-ubyte.gz: " in err
    assert HINT in err and "Traceback" not in err
    assert not list((tmp_path / "m").glob("*.part"))


def test_not_found(www: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, url = www
    assert main(["cifar10", str(tmp_path / "c"), "--mirror", url]) == 1
    err = capsys.readouterr().err
    assert f"cannot download {url}cifar-10-python.tar.gz: HTTP 404" in err and HINT in err


def test_timeout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        assert main(["cifar100", str(tmp_path / "c"), "--mirror", url, "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert f"cannot download {url}cifar-100-python.tar.gz: timed out" in err and HINT in err


def test_unreachable_cli_has_no_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "digits.download_data", "mnist", str(tmp_path), "--mirror", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot download {url}train-images-idx3-ubyte.gz")
    assert HINT in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- cifar


def test_cifar10(www: tuple[Path, str], tmp_path: Path) -> None:
    served, url = www
    batches = fake_cifar10(served)
    out = tmp_path / "cifar10"
    assert main(["cifar10", str(out), "--mirror", url]) == 0
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    check_layout(out, names, {"train": 20, "test": 5})
    # Training image 17 is image 1 of data_batch_5 (str keys), label 17 % 10.
    path, label = lines(out / "train.txt")[17]
    assert Path(path) == out / "train" / "horse" / "00017.png" and label == "7"
    image = np.array(read_image(path))
    expected = batches["data_batch_5"]["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert image.shape == (32, 32, 3) and np.array_equal(image, expected)
    assert not (out / "cifar-10-batches-py").exists()  # read straight from the tarball


def test_cifar100(www: tuple[Path, str], tmp_path: Path) -> None:
    served, url = www
    fake_cifar100(served)
    out = tmp_path / "cifar100"
    assert main(["cifar100", str(out), "--mirror", url]) == 0
    check_layout(out, ["apple", "bee", "cloud", "dolphin"], {"train": 8, "test": 4})
    assert (out / "coarse_labels.txt").read_text() == "fruit\nother\n"
    fine, coarse = lines(out / "train.txt"), lines(out / "train_coarse.txt")
    assert [p for p, _ in fine] == [p for p, _ in coarse]
    assert [c for _, c in coarse] == [str(i % 2) for i in range(8)]


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_pickles_cannot_run_code() -> None:
    with pytest.raises(DataError, match=r"refusing to load global (posix|nt)\.getcwd"):
        cifar10.load_pickle(pickle.dumps({"data": _Evil()}), "evil")
    loaded = cifar10.load_pickle(pickle.dumps({b"data": np.arange(3, dtype=np.uint8)}), "ok")
    assert list(loaded) == ["data"] and loaded["data"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------- synthetic


def _load(root: Path, phase: str) -> tuple[np.ndarray, np.ndarray]:
    listed = lines(root / f"{phase}.txt")
    images = np.stack([np.asarray(read_image(p), dtype=np.float32) for p, _ in listed])
    return images, np.array([int(label) for _, label in listed])


def test_synthetic_counts_and_layout(tmp_path: Path) -> None:
    info = synthetic.generate(tmp_path / "s", classes=4, per_class=12, size=16, test_per_class=3)
    assert info.counts == {"train": 48, "test": 12} and info.labels == ["0", "1", "2", "3"]
    check_layout(tmp_path / "s", info.labels, info.counts)
    for label in info.labels:
        assert len(list((tmp_path / "s" / "train" / label).iterdir())) == 12
    image = read_image(next((tmp_path / "s" / "test" / "2").iterdir()))
    assert image.mode == "L" and image.size == (16, 16)
    default = synthetic.generate(tmp_path / "d", classes=12, per_class=5)
    assert default.counts == {"train": 60, "test": 12}
    assert default.labels[:3] == ["00", "01", "02"] and default.labels[-1] == "11"
    none = synthetic.generate(tmp_path / "n", classes=2, per_class=2, test_per_class=0)
    assert none.counts == {"train": 4} and not (tmp_path / "n" / "test").exists()


def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate(tmp_path / name, classes=3, per_class=4, seed=seed, channels=3)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_classes_are_distinguishable(tmp_path: Path, channels: int) -> None:
    info = synthetic.generate(tmp_path, per_class=30, test_per_class=10, channels=channels)
    train, train_labels = _load(tmp_path, "train")
    test, test_labels = _load(tmp_path, "test")
    means = np.stack([train[train_labels == k].mean(axis=0) for k in range(len(info.labels))])
    gaps = [np.abs(means[a] - means[b]).mean() for a in range(10) for b in range(a + 1, 10)]
    assert min(gaps) > 5.0  # every pair of classes has clearly different mean images
    # A nearest-class-mean classifier already gets the test set right.
    flat = means.reshape(10, -1)
    dists = ((test.reshape(len(test), 1, -1) - flat[None]) ** 2).sum(axis=2)
    assert (dists.argmin(axis=1) == test_labels).mean() >= 0.95


def test_synthetic_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["synthetic", str(tmp_path / "s"), "--classes", "3", "--per-class", "5"]
    args += ["--test-per-class", "2", "--size", "20", "--channels", "3", "--seed", "7"]
    assert main(args) == 0
    assert "(15 train, 6 test images)" in capsys.readouterr().out
    image = read_image(next((tmp_path / "s" / "train" / "1").iterdir()))
    assert image.mode == "RGB" and image.size == (20, 20)
    assert main(["synthetic", str(tmp_path / "bad"), "--size", "4"]) == 1
    assert "size must be at least 8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="classes must be at least 2"):
        synthetic.generate(tmp_path / "x", classes=1)
