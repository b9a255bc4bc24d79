"""The built-in image classification data extension: folders or text lists of images."""

from __future__ import annotations

import logging
import os
import random
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from digits.dataset_io import image_bytes
from digits.paths import confine
from digits.utils import constants, override, subclass
from digits.utils.image import (
    RESIZE_MODES,
    load_image,
    read_image,
    resize_image_with_pil,
)

from .. import fields
from ..interface import DataIngestionInterface
from . import folders, s3source, textfiles
from .resolve import FolderResolver

logger = logging.getLogger(__name__)

METHODS = ("folder", "textfile", "s3")
ENCODINGS = ("png", "jpg", "none")
MAX_SIDE = 8192
NOISE_MODES = ("fill", "half_crop")  # the resize modes that draw random noise
ENCODED = ("png", "jpg")  # the encodings whose images encode_entry_sample encodes itself
# encoding -> the source format whose files are stored as they are when they need no change
AS_IS = {"png": "PNG"}

Entry = tuple[str, int]


def _roots(data_roots: Sequence[str] | str | None) -> list[str]:
    if data_roots is None:
        return []
    if isinstance(data_roots, str):
        return [r for r in data_roots.split(os.pathsep) if r.strip()]
    return [str(r) for r in data_roots if str(r).strip()]


@subclass
class DataIngestion(DataIngestionInterface):
    """Image classification from a folder of class sub-folders, text lists, or an S3 bucket.

    ``data_roots`` (the service's DIGITS_DATA_ROOTS) is kept out of ``userdata`` so that a
    value sent in a form is never persisted and trusted later: callers pass it from settings.
    """

    def __init__(
        self,
        is_inference_db: bool = False,
        data_roots: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the form's fields (DIGITS's names); ValueError names the bad value."""
        kwargs.setdefault("seed", 0)
        super().__init__(is_inference_db=is_inference_db, **kwargs)
        self.data_roots = _roots(data_roots)
        self._resolver = FolderResolver(self.data_roots)
        self.labels: list[str] = []
        self._splits: dict[str, list[Entry]] | None = None
        form = kwargs
        self.method = fields.get_choice(form, "method", "folder", METHODS)
        self.seed = fields.get_int(form, "seed", 0, lo=0)
        self.resize_width = fields.get_int(form, "resize_width", 256, lo=1, hi=MAX_SIDE)
        self.resize_height = fields.get_int(form, "resize_height", 256, lo=1, hi=MAX_SIDE)
        self.resize_channels = fields.get_int(form, "resize_channels", 3)
        if self.resize_channels not in (1, 3):
            raise ValueError(
                f"resize_channels must be 1 (grayscale) or 3 (color), not {self.resize_channels}"
            )
        self.resize_mode = fields.get_choice(form, "resize_mode", "squash", RESIZE_MODES)
        self.encoding = fields.get_choice(form, "encoding", "png", ENCODINGS)
        self.backend = fields.get_choice(form, "backend", "lmdb", ("lmdb",))
        # As in DIGITS, LMDB records are never compressed as a whole.
        fields.get_choice(form, "compression", "none", ("none", "gzip"))
        self.compression = "none"
        if self.method == "folder":
            self._init_folder(form)
        elif self.method == "textfile":
            self._init_textfile(form)
        else:
            self._init_s3(form)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({s3source.redacted(self.userdata)!r})"

    # --- form validation -------------------------------------------------------------------

    def _folder(self, form: dict[str, Any], name: str) -> str:
        value = fields.get_str(form, name)
        if value is None:
            raise ValueError(f"{name} is required: the folder that holds one sub-folder per class")
        path = confine(value, self.data_roots)
        if not path.exists():
            raise ValueError(f"{name} {value!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"{name} {value!r} is not a directory")
        if not folders.class_dirnames(str(path)):
            raise ValueError(
                f"{name} {value!r} is empty: it has no class sub-folders (one per class)"
            )
        return str(path)

    def _per_class(self, form: dict[str, Any], prefix: str) -> tuple[int, int | None]:
        # As in DIGITS, a blank or 0 minimum means 1 and a blank or 0 maximum means none.
        low = fields.get_int(form, f"{prefix}_min_per_class", 2, lo=0) or 1
        high = fields.get_int(form, f"{prefix}_max_per_class", None, lo=0) or None
        if high is not None and high < low:
            raise ValueError(
                f"{prefix}_max_per_class ({high}) is less than {prefix}_min_per_class ({low})"
            )
        return low, high

    @staticmethod
    def _percentages(
        form: dict[str, Any], val_name: str, test_name: str, val_used: bool, test_used: bool
    ) -> tuple[int, int]:
        """Read the val/test percentages; one replaced by a separate folder counts as 0."""
        pct_val = fields.get_int(form, val_name, 25, lo=0, hi=100) if val_used else 0
        pct_test = fields.get_int(form, test_name, 0, lo=0, hi=100) if test_used else 0
        assert pct_val is not None and pct_test is not None
        if pct_val + pct_test >= 100:
            raise ValueError(
                f"{val_name} ({pct_val}) + {test_name} ({pct_test}) = {pct_val + pct_test}% "
                "leaves no images for training; the sum must be below 100"
            )
        return pct_val, pct_test

    def _init_folder(self, form: dict[str, Any]) -> None:
        self.has_val_folder = fields.get_bool(form, "has_val_folder")
        self.has_test_folder = fields.get_bool(form, "has_test_folder")
        # As in DIGITS, a separate val (test) folder replaces the val (test) percentage.
        self.folder_pct_val, self.folder_pct_test = self._percentages(
            form,
            "folder_pct_val",
            "folder_pct_test",
            val_used=not self.has_val_folder,
            test_used=not self.has_test_folder,
        )
        self.folder_train = self._folder(form, "folder_train")
        self.train_per_class = self._per_class(form, "folder_train")
        self.folder_val = self._folder(form, "folder_val") if self.has_val_folder else None
        self.val_per_class = self._per_class(form, "folder_val")
        self.folder_test = self._folder(form, "folder_test") if self.has_test_folder else None
        self.test_per_class = self._per_class(form, "folder_test")

    def _local_file(self, form: dict[str, Any], name: str) -> str:
        value = fields.get_str(form, name)
        if value is None:
            raise ValueError(f"{name} is required when textfile_use_local_files is set")
        path = confine(value, self.data_roots)
        if not path.is_file():
            raise ValueError(f"{name} {value!r} is not an existing file")
        return str(path)

    def _text_source(self, form: dict[str, Any], stage: str) -> tuple[str, str] | None:
        """Return (kind, value) for a stage's list: ("path", local file) or ("text", content)."""
        upload, local = f"textfile_{stage}_images", f"textfile_local_{stage}_images"
        if self.textfile_use_local_files:
            if fields.get_str(form, local) is None:
                return None
            return "path", self._local_file(form, local)
        text = fields.get_text(form, upload)
        return None if text is None else ("text", text)

    def _init_textfile(self, form: dict[str, Any]) -> None:
        self.textfile_use_local_files = fields.get_bool(form, "textfile_use_local_files")
        self.textfile_shuffle = fields.get_bool(form, "textfile_shuffle", default=True)
        if self.textfile_use_local_files:
            self._labels_source = ("path", self._local_file(form, "textfile_local_labels_file"))
        else:
            text = fields.get_text(form, "textfile_labels_file")
            if text is None:
                raise ValueError("textfile_labels_file is required: the labels, one per line")
            self._labels_source = ("text", text)
        self._list_sources: dict[str, tuple[str, str] | None] = {}
        self._list_folders: dict[str, str | None] = {}
        for stage, db in zip(("train", "val", "test"), constants.STAGES, strict=True):
            name = self._list_field(stage)
            read = fields.get_str if self.textfile_use_local_files else fields.get_text
            given = read(form, name) is not None
            # As in DIGITS, val and test lists are used only when their checkbox is set (which
            # defaults to "a list was given" here); the train list is always required.
            used = stage == "train" or fields.get_bool(form, f"textfile_use_{stage}", default=given)
            if used and not given:
                why = "" if stage == "train" else f"textfile_use_{stage} is set but "
                raise ValueError(
                    f"{why}{name} is required: the 'path label' list of {stage} images"
                )
            self._list_sources[db] = self._text_source(form, stage) if used else None
            self._list_folders[db] = (
                self._optional_dir(form, f"textfile_{stage}_folder") if used else None
            )

    def _list_field(self, stage: str) -> str:
        """Return the form field that holds a stage's image list."""
        if self.textfile_use_local_files:
            return f"textfile_local_{stage}_images"
        return f"textfile_{stage}_images"

    def _optional_dir(self, form: dict[str, Any], name: str) -> str | None:
        value = fields.get_str(form, name)
        if value is None:
            return None
        path = confine(value, self.data_roots)
        if not path.is_dir():
            raise ValueError(f"{name} {value!r} is not an existing directory")
        return str(path)

    def _init_s3(self, form: dict[str, Any]) -> None:
        # s3_accesskey / s3_secretkey (DIGITS's names) are SECRET_FIELDS, kept out of repr().
        self.s3_source = s3source.source_from_form(form)  # what a shard worker fetches with
        self.s3_pcts = self._percentages(
            form, "s3_pct_val", "s3_pct_test", val_used=True, test_used=True
        )
        self.s3_train_per_class = self._per_class(form, "s3_train")

    # --- itemizing -------------------------------------------------------------------------

    def _itemize_folder(self) -> dict[str, list[Entry]]:
        train_min, train_max = self.train_per_class
        pct_val, pct_test = self.folder_pct_val, self.folder_pct_test
        need = 1 + (pct_val > 0) + (pct_test > 0)
        classes = folders.scan_folder(self.folder_train, self.data_roots, "folder_train")
        if len(classes) < 2:
            raise ValueError(
                f"folder_train {self.folder_train!r} has {len(classes)} class sub-folder "
                f"({classes[0].dirname!r}); classification needs at least two"
            )
        self.labels = [c.label for c in classes]
        splits: dict[str, list[Entry]] = {stage: [] for stage in constants.STAGES}
        for index, cls in enumerate(classes):
            paths = folders.select(
                cls,
                need=need,
                min_per_class=train_min,
                max_per_class=train_max,
                key=f"{self.seed}:folder_train:{cls.dirname}",
                field="folder_train",
            )
            n_train, n_val, _ = folders.split_counts(len(paths), pct_val, pct_test)
            splits[constants.TRAIN_DB] += [(p, index) for p in paths[:n_train]]
            splits[constants.VAL_DB] += [(p, index) for p in paths[n_train : n_train + n_val]]
            splits[constants.TEST_DB] += [(p, index) for p in paths[n_train + n_val :]]
        extra = (
            ("folder_val", self.folder_val, self.val_per_class, constants.VAL_DB),
            ("folder_test", self.folder_test, self.test_per_class, constants.TEST_DB),
        )
        for field, folder, (low, high), stage in extra:
            if folder is not None:
                splits[stage] = self._itemize_extra_folder(field, folder, low, high)
        return splits

    def _itemize_extra_folder(
        self, field: str, folder: str, low: int, high: int | None
    ) -> list[Entry]:
        """Itemize a separate val/test folder against the training labels."""
        index = {label: i for i, label in enumerate(self.labels)}
        entries: list[Entry] = []
        for cls in folders.scan_folder(folder, self.data_roots, field):
            if cls.label not in index:
                raise ValueError(
                    f"{field} {folder!r} has class sub-folder {cls.dirname!r}, which is not a "
                    f"class of folder_train (classes: {', '.join(map(repr, self.labels))})"
                )
            paths = folders.select(
                cls,
                need=1,
                min_per_class=low,
                max_per_class=high,
                key=f"{self.seed}:{field}:{cls.dirname}",
                field=field,
            )
            entries += [(p, index[cls.label]) for p in paths]
        return entries

    def _read_source(self, source: tuple[str, str], field: str) -> str:
        kind, value = source
        return textfiles.read_text(value, self.data_roots, field) if kind == "path" else value

    def _itemize_textfile(self) -> dict[str, list[Entry]]:
        labels_field = (
            "textfile_local_labels_file"
            if self.textfile_use_local_files
            else ("textfile_labels_file")
        )
        self.labels = textfiles.parse_labels(
            self._read_source(self._labels_source, labels_field), labels_field
        )
        splits: dict[str, list[Entry]] = {}
        for stage_name, stage in zip(("train", "val", "test"), constants.STAGES, strict=True):
            source = self._list_sources[stage]
            if source is None:
                splits[stage] = []
                continue
            field = self._list_field(stage_name)
            splits[stage] = textfiles.parse_list(
                self._read_source(source, field),
                source=field,
                num_labels=len(self.labels),
                folder=self._list_folders[stage],
                folder_field=f"textfile_{stage_name}_folder",
                roots=self.data_roots,
            )
        return splits

    def _ensure_splits(self) -> dict[str, list[Entry]]:
        if self._splits is None:
            if self.method == "folder":
                splits = self._itemize_folder()
                shuffle = True
            elif self.method == "textfile":
                splits = self._itemize_textfile()
                shuffle = self.textfile_shuffle
            else:
                self.labels, splits = s3source.itemize(
                    self.s3_source, self.seed, self.s3_pcts, self.s3_train_per_class
                )
                shuffle = True
            if shuffle:  # mix the classes, so that every shard holds a bit of each
                for stage, entries in splits.items():
                    random.Random(f"{self.seed}:{stage}").shuffle(entries)
            self._splits = splits
            logger.info(
                "itemized %s: %d classes, %s",
                self.method,
                len(self.labels),
                ", ".join(f"{stage} {len(e)}" for stage, e in splits.items()),
            )
        return self._splits

    @override
    def itemize_entries(self, stage: str) -> list[Entry]:
        """Return ``[(path, label_index), ...]`` for ``stage``; the split is made once."""
        if stage not in constants.STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {constants.STAGES}")
        return list(self._ensure_splits()[stage])

    def get_labels(self) -> list[str]:
        """Return the class labels in label-index order (itemizing first if needed)."""
        self._ensure_splits()
        return list(self.labels)

    # --- encoding --------------------------------------------------------------------------

    @override
    def encode_entry(self, entry: Any) -> tuple[np.ndarray, int]:
        """Load, convert and resize one ``(path, label)`` entry to ``(HWC uint8 array, label)``."""
        path, label = self._checked(entry)
        image = load_image(self._resolver.confine(path), self.resize_channels)
        return self._resize_with_pil(image, path)[0], label

    def encode_entry_sample(
        self, entry: Any, encoding: str
    ) -> tuple[np.ndarray, int, bytes | None]:
        """``encode_entry``, and the image already encoded as ``encoding`` (None: not done).

        The resized image is encoded as it is, not rebuilt from the array. A PNG that is already
        in the wanted size and mode (no conversion, no resize) decodes to exactly the feature:
        its file is stored as it is, which saves the re-encoding, the costliest step for small
        images (bloated files, with big metadata chunks, are re-encoded all the same).
        """
        if encoding not in ENCODED or type(self).encode_entry is not DataIngestion.encode_entry:
            return (*self.encode_entry(entry), None)  # (a subclass's own encode_entry rules)
        path, label = self._checked(entry)
        resolved = self._resolver.confine(path)
        fmt = AS_IS.get(encoding)
        data = None
        if fmt is None:
            image = load_image(resolved, self.resize_channels)
        else:
            image, data = read_image(resolved, self.resize_channels)
        feature, resized = self._resize_with_pil(image, path)
        if data is not None and (
            image.format == fmt
            and image.size == (self.resize_width, self.resize_height)
            and getattr(image, "n_frames", 1) == 1
            and len(data) <= feature.nbytes + feature.nbytes // 16 + 1024
        ):
            return feature, label, data
        return feature, label, None if resized is None else image_bytes(resized, encoding)

    def _checked(self, entry: Any) -> tuple[str, int]:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"entry must be (path, label), not {entry!r}")
        path, label = entry
        if not isinstance(path, str) or isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"entry must be (str path, int label), not {entry!r}")
        if s3source.is_s3_url(path):
            raise s3source.fetch_first_error(path)
        return path, label

    def _resize_with_pil(self, image: Any, path: str) -> tuple[np.ndarray, Any]:
        return resize_image_with_pil(
            image,
            self.resize_height,
            self.resize_width,
            self.resize_channels,
            self.resize_mode,
            rng=self._rng(path),
        )

    def _rng(self, path: str) -> np.random.Generator | None:
        if self.resize_mode not in NOISE_MODES:
            return None
        # Noise is seeded by the path, so re-encoding a shard gives the same bytes.
        return np.random.default_rng([self.seed, zlib.crc32(path.encode("utf-8", "replace"))])

    # --- metadata --------------------------------------------------------------------------

    @staticmethod
    @override
    def get_category() -> str:
        return "Images"

    @staticmethod
    @override
    def get_id() -> str:
        return "image-classification"

    @staticmethod
    @override
    def get_title() -> str:
        return "Classification"

    @staticmethod
    @override
    def get_dataset_form() -> Any:
        # The Flask-WTF form arrives with the gateway's dataset pages.
        return None

    @staticmethod
    @override
    def get_dataset_template(form: Any) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError("the classification dataset template comes with the gateway")

    @staticmethod
    @override
    def get_inference_form() -> Any:
        # Classification has no inference database form, as in DIGITS.
        return None
