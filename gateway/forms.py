"""DIGITS's dataset and model form fields, checked at the gateway: every error names its field."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from digits.registry import FOLLOW_MODES, check_alias, check_name
from digits.secrets import SECRET_FIELDS

METHODS = ("folder", "textfile", "s3")
RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
ENCODINGS = ("png", "jpg", "none")
MODEL_METHODS = ("standard", "custom", "previous", "pretrained")
NETWORKS = ("lenet", "alexnet", "googlenet", "resnet18", "resnet50", "fcn")
SOLVERS = ("SGD", "NESTEROV", "ADAM", "ADAGRAD", "RMSPROP", "ADADELTA")
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
MEANS = ("none", "image", "pixel")
_TRUE = ("1", "true", "on", "yes", "y")
_FALSE = ("0", "false", "off", "no", "n", "")
# Fields of the form that are not the extension's (they become the command's own fields).
_OWN = ("dataset_name", "model_name", "group_name", "csrf_token", "dataset")


class FormErrors(ValueError):
    """Invalid fields: ``errors`` maps each field name to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class _Checker:
    """Collects converted values and errors field by field."""

    def __init__(self, form: Mapping[str, Any]) -> None:
        self.form = form
        self.out: dict[str, Any] = {k: v for k, v in form.items() if k not in _OWN}
        self.errors: dict[str, list[str]] = {}
        if "secret_ref" in form:  # made by the gateway when it seals keys; never taken
            self.error(
                "secret_ref",
                f"secret_ref {form['secret_ref']!r} cannot be given: send the keys themselves"
                " (they are sealed for you), or clone your own job to reuse its keys",
            )

    def error(self, name: str, message: str) -> None:
        """Record an error of field ``name``."""
        self.errors.setdefault(name, []).append(message)

    def raw(self, name: str) -> str:
        """The field's text, stripped ('' when absent)."""
        value = self.form.get(name)
        return "" if value is None else str(value).strip()

    def required(self, name: str, what: str = "") -> str:
        """A non-empty text field."""
        value = self.raw(name)
        if not value:
            self.error(name, f"{name} is required{what}")
        return value

    def number(
        self, name: str, kind: Callable[[str], Any], lo: float, hi: float, default: Any = None
    ) -> Any:
        """A number in lo..hi, converted in the output form (absent: ``default``, left out)."""
        text = self.raw(name)
        if not text:
            return default
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            self.error(name, f"{name} {text!r} is not {noun}")
            return default
        if not lo <= value <= hi:
            self.error(name, f"{name} {text!r} is out of range {lo:g}..{hi:g}")
            return default
        self.out[name] = value
        return value

    def numbers(self, name: str, kind: Callable[[str], Any], lo: float) -> None:
        """A number, or a comma-separated list of them (DIGITS's sweep), each at least ``lo``."""
        text = self.raw(name)
        if not text:
            return
        try:
            values = [kind(part.strip()) for part in text.split(",")]
        except ValueError:
            self.error(name, f"{name} {text!r} is not a number or a comma-separated list of them")
            return
        if any(v < lo for v in values):
            self.error(name, f"{name} {text!r}: every value must be at least {lo:g}")
            return
        self.out[name] = values[0] if len(values) == 1 else text

    def choice(self, name: str, choices: tuple[str, ...], default: str, fold: bool = True) -> str:
        """One of ``choices`` (case-insensitive unless ``fold`` is off)."""
        text = self.raw(name) or default
        by_key = {(c.lower() if fold else c): c for c in choices}
        value = by_key.get(text.lower() if fold else text)
        if value is None:
            self.error(name, f"{name} {text!r} is not one of {', '.join(choices)}")
            return default
        self.out[name] = value
        return value

    def flag(self, name: str) -> bool:
        """A checkbox: true/false, on/off, y/n, 1/0 (absent: false)."""
        text = self.raw(name).lower()
        if text not in _TRUE + _FALSE:
            self.error(name, f"{name} must be true or false, not {self.raw(name)!r}")
            return False
        if name in self.form:
            self.out[name] = text in _TRUE
        return text in _TRUE

    def done(self) -> dict[str, Any]:
        """The converted form, or FormErrors."""
        if self.errors:
            raise FormErrors(self.errors)
        return self.out


def dataset_form(form: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Check an image classification dataset form: (name, group, the form for dataset.create)."""
    c = _Checker(form)
    name = c.required("dataset_name")
    method = c.choice("method", METHODS, "folder")
    if method == "folder":
        c.required("folder_train", " for method 'folder'")
        pct_val = c.number("folder_pct_val", int, 0, 100, 25)
        pct_test = c.number("folder_pct_test", int, 0, 100, 0)
        if pct_val is not None and pct_test is not None and pct_val + pct_test > 100:
            c.error("folder_pct_val", "folder_pct_val + folder_pct_test exceed 100")
        for stage in ("train", "val", "test"):
            c.number(f"folder_{stage}_min_per_class", int, 1, 1 << 31)
            c.number(f"folder_{stage}_max_per_class", int, 1, 1 << 31)
        for stage in ("val", "test"):
            if c.flag(f"has_{stage}_folder"):
                c.required(f"folder_{stage}", f" when has_{stage}_folder is set")
    elif method == "textfile":
        if c.flag("textfile_use_local_files"):
            c.required("textfile_local_train_images", " with textfile_use_local_files")
        else:
            c.required("textfile_train_images", " for method 'textfile'")
        c.flag("textfile_shuffle")
    else:
        c.required("s3_bucket", " for method 's3'")
        c.number("s3_pct_val", int, 0, 100)
        c.number("s3_pct_test", int, 0, 100)
        c.flag("s3_watch")
    c.number("resize_width", int, 1, 8192)
    c.number("resize_height", int, 1, 8192)
    channels = c.number("resize_channels", int, 1, 4)
    if channels not in (None, 1, 3):
        c.error("resize_channels", f"resize_channels {channels} is not one of 1, 3")
    c.choice("resize_mode", RESIZE_MODES, "squash")
    c.choice("encoding", ENCODINGS, "png")
    c.choice("backend", ("lmdb",), "lmdb")
    return name, c.raw("group_name"), c.done()


def model_form(form: Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """Check an image classification model form: (name, dataset id, group, checked form)."""
    c = _Checker(form)
    name = c.required("model_name")
    dataset_id = c.required("dataset", " (the dataset job's id)")
    method = c.choice("method", MODEL_METHODS, "standard")
    if method == "standard":
        c.choice("standard_networks", NETWORKS, "lenet")
    elif method == "custom":
        c.required("custom_network", " for method 'custom' (a Keras model JSON)")
    else:
        if not (method == "pretrained" and c.raw("pretrained_archive")):
            # A pretrained model is an earlier job's snapshot, or an uploaded archive.
            c.required("previous_networks", f" for method {method!r} (a model job id)")
        c.number("previous_network_snapshot", float, 0, 1e6)
    c.number("train_epochs", int, 1, 100_000)
    c.numbers("batch_size", int, 1)
    c.numbers("learning_rate", float, 0)
    c.number("batch_accumulation", int, 1, 1024)
    c.choice("solver_type", SOLVERS, "SGD")
    c.choice("lr_policy", LR_POLICIES, "fixed", fold=False)
    c.number("random_seed", int, 0, 2**32 - 1)
    c.number("snapshot_interval", float, 0.01, 100_000)
    c.number("val_interval", float, 0.01, 100_000)
    c.choice("use_mean", MEANS, "image")
    c.number("crop_size", int, 1, 8192)
    c.number("early_stopping", int, 0, 100_000)
    if "shuffle" in form:
        c.flag("shuffle")
    registry_fields(c)
    return name, dataset_id, c.raw("group_name"), c.done()


def registry_fields(c: _Checker) -> None:
    """The New Model form's registry fields: register under a name, follow, the promotion rule."""
    registry_name = c.raw("registry_name")
    for key in ("registry_name", "follow", "promote_alias", "promote_metric"):
        c.out.pop(key, None)  # put back below once checked (stripped)
    if registry_name:
        try:
            c.out["registry_name"] = check_name(registry_name, "registry_name")
        except ValueError as exc:
            c.error("registry_name", str(exc))
    follow = c.raw("follow").lower()
    if follow:
        if follow not in FOLLOW_MODES:
            c.error("follow", f"follow {c.raw('follow')!r} is not one of {', '.join(FOLLOW_MODES)}")
        elif not registry_name:
            c.error("follow", f"follow {follow!r} needs registry_name (the name to register under)")
        else:
            c.out["follow"] = follow
    c.number("follow_min_new_samples", int, 0, 1 << 31)
    c.number("follow_min_interval_s", float, 0, 1e9)
    alias = c.raw("promote_alias")
    if alias:
        try:
            c.out["promote_alias"] = check_alias(alias)
        except ValueError as exc:
            c.error("promote_alias", f"promote_alias: {exc}")
    if c.raw("promote_metric"):
        c.out["promote_metric"] = c.raw("promote_metric")
    c.number("promote_margin", float, 0, 1e9)


def redacted(form: Mapping[str, Any]) -> dict[str, Any]:
    """A form without credentials or references to them: safe to answer with."""
    return {k: v for k, v in form.items() if k not in SECRET_FIELDS and k != "secret_ref"}


def plugin_form(extension: Any, formdata: Any = None, data: Mapping[str, Any] | None = None) -> Any:
    """The data plugin's Flask-WTF form bound to ``formdata`` (or filled with ``data``).

    The page's CSRF check is the app's (CSRFProtect) and the JSON API has none, so the form's
    own CSRF field is turned off.
    """
    form_class = type(extension.get_dataset_form())
    form = form_class(formdata=formdata, meta={"csrf": False})
    if data is not None and formdata is None:
        form.process(data=redacted(data))
    return form


def _plain(value: Any) -> Any:
    """A form value as something msgpack carries (an upload becomes its text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    read = getattr(value, "read", None)
    if callable(read):  # a FileStorage
        return read().decode("utf-8", "replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        return float(value)  # Decimal
    except (TypeError, ValueError):
        return str(value)


def plugin_dataset_form(form: Any, own: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Validate a plugin's form: (name, group, its data for dataset.create), or FormErrors."""
    errors: dict[str, list[str]] = {}
    name = str(own.get("dataset_name") or "").strip()
    if not name:
        errors["dataset_name"] = ["dataset_name is required"]
    if not form.validate():
        for field in form:
            for message in field.errors if isinstance(field.errors, list) else []:
                shown = field.data if isinstance(field.data, str | int | float) else None
                value = f" (got {shown!r})" if shown not in (None, "") else ""
                errors.setdefault(field.name, []).append(f"{field.name}: {message}{value}")
    if errors:
        raise FormErrors(errors)
    data = {k: _plain(v) for k, v in form.data.items() if k not in _OWN}
    return name, str(own.get("group_name") or "").strip(), data
