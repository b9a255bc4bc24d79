"""``python -m digits.download_data mnist|cifar10|cifar100|synthetic DIR``: fetch a dataset."""

from __future__ import annotations

import argparse
import sys
import time

from digits.download_data import DATASETS, cifar10, cifar100, mnist, synthetic
from digits.download_data.downloader import (
    DEFAULT_TIMEOUT,
    MIRROR_ENV,
    DataError,
    DatasetInfo,
    DownloadError,
    fail,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m digits.download_data",
        description="Download-Data tool - DIGITS: writes DIR/{train,test}/<label>/<nnnnn>.png, "
        "DIR/labels.txt and DIR/{train,test}.txt ('path label_index' lines).",
    )
    parser.add_argument("dataset", type=str.lower, choices=DATASETS, help="the dataset to fetch")
    parser.add_argument("output_dir", help="the output directory for the data")
    parser.add_argument(
        "-c", "--clean", action="store_true", help="clean out the directory first (if it exists)"
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help=f"base URL to download the archives from (default ${MIRROR_ENV}, else the originals)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds"
    )
    syn = parser.add_argument_group("synthetic options")
    syn.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    syn.add_argument(
        "--per-class",
        type=int,
        default=synthetic.DEFAULT_PER_CLASS,
        help=f"training images per class (default {synthetic.DEFAULT_PER_CLASS})",
    )
    syn.add_argument(
        "--test-per-class", type=int, default=None, help="test images per class (default 1/5)"
    )
    syn.add_argument("--size", type=int, default=28, help="image width and height (default 28)")
    syn.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 gray, 3 RGB")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run(args: argparse.Namespace) -> DatasetInfo:
    """Fetch or generate the dataset the parsed ``args`` name."""
    if args.dataset == "synthetic":
        return synthetic.generate(
            args.output_dir,
            classes=args.classes,
            per_class=args.per_class,
            size=args.size,
            channels=args.channels,
            seed=args.seed,
            test_per_class=args.test_per_class,
            clean=args.clean,
        )
    module = {"mnist": mnist, "cifar10": cifar10, "cifar100": cifar100}[args.dataset]
    return module.download(args.output_dir, args.clean, args.mirror, args.timeout)


def main(argv: list[str] | None = None) -> int:
    """Run the tool; 0 on success, 1 with a one-line message on stderr on failure."""
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    try:
        info = run(args)
    except (DownloadError, DataError, ValueError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot write to {args.output_dir}: {exc}")
    except KeyboardInterrupt:
        return fail("interrupted")
    counts = ", ".join(f"{n} {phase}" for phase, n in info.counts.items())
    print(f"Dataset directory is created successfully at '{info.root}' ({counts} images)")
    print(f"Done after {time.monotonic() - start:.1f} seconds.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
