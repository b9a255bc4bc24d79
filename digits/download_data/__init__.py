"""Download MNIST, CIFAR-10 or CIFAR-100 (or generate a synthetic set) as DIGITS image folders."""

from __future__ import annotations

from digits.download_data.downloader import (
    MIRROR_ENV,
    DataError,
    DatasetInfo,
    DownloadError,
)

DATASETS = ("mnist", "cifar10", "cifar100", "synthetic")

__all__ = ["DATASETS", "MIRROR_ENV", "DataError", "DatasetInfo", "DownloadError"]
