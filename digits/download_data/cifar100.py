"""CIFAR-100: the python tarball, written with the fine labels plus coarse-label text files."""

from __future__ import annotations

import os

from digits.download_data.cifar10 import (
    BASE_URLS,
    images_of,
    label_names,
    labels_of,
    read_members,
)
from digits.download_data.downloader import (
    DEFAULT_TIMEOUT,
    DatasetInfo,
    base_urls,
    fetch,
    prepare_outdir,
    say,
    write_labels,
    write_phase,
)

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
PHASES = ("train", "test")
COARSE_LABELS = "coarse_labels.txt"


def download(
    outdir: str | os.PathLike[str],
    clean: bool = False,
    mirror: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DatasetInfo:
    """Download CIFAR-100 into ``outdir``: folders by fine label, coarse labels in text files.

    Besides labels.txt and <phase>.txt (fine), it writes coarse_labels.txt and
    <phase>_coarse.txt, which list the same images with their coarse label index.
    """
    root = prepare_outdir(outdir, clean)
    archive = fetch(ARCHIVE, base_urls(mirror, BASE_URLS), root, timeout)
    members = read_members(archive, FOLDER, ["meta", *PHASES])
    fine_names = label_names(members["meta"], "fine_label_names", "meta")
    coarse_names = label_names(members["meta"], "coarse_label_names", "meta")
    info = DatasetInfo(root, fine_names)
    write_labels(root, fine_names)
    write_labels(root, coarse_names, COARSE_LABELS)
    for phase in PHASES:
        batch = members[phase]
        images = images_of(batch, phase)
        fine = labels_of(batch, "fine_labels", len(images), len(fine_names), phase)
        coarse = labels_of(batch, "coarse_labels", len(images), len(coarse_names), phase)
        say(f"Writing {len(images)} {phase} images ...")
        extra = {f"{phase}_coarse.txt": coarse.tolist()}
        info.counts[phase] = write_phase(root, phase, images, fine, fine_names, extra)
    return info
