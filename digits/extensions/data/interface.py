"""The data ingestion plugin interface, with DIGITS's import path, method names and meanings."""

from __future__ import annotations

from typing import Any


class DataIngestionInterface:
    """A data ingestion extension: turns a dataset form into entries, and entries into samples.

    The coordinator calls ``itemize_entries(stage)`` once per stage; shard workers, possibly on
    other machines, build their own instance from ``get_user_data()`` and call
    ``encode_entry(entry)`` for the entries of their shard, in no particular order. Entries must
    therefore be plain msgpack-able values (str, int, float, bool, None, lists, dicts).
    """

    def __init__(self, is_inference_db: bool = False, **kwargs: Any) -> None:
        """Keep the form's fields in ``self.userdata`` and as attributes, as DIGITS did."""
        self.is_inference_db = is_inference_db
        # Everything to persist with the job goes in userdata; nothing else is kept.
        self.userdata = kwargs
        for key, value in kwargs.items():
            if key.startswith("_") or callable(getattr(type(self), key, None)):
                raise ValueError(
                    f"form field {key!r} clashes with a method or private name of "
                    f"{type(self).__name__}; rename the field"
                )
            setattr(self, key, value)

    def encode_entry(self, entry: Any) -> Any:
        """Return ``(feature, label)``, or a list of them, for one entry from itemize_entries.

        Features and labels are numpy arrays in HWC order (RGB for colour) or scalars.
        """
        raise NotImplementedError

    def itemize_entries(self, stage: str) -> list[Any]:
        """Return the entries to encode for ``stage`` (TRAIN_DB, VAL_DB or TEST_DB)."""
        raise NotImplementedError

    @staticmethod
    def get_category() -> str:
        """Return the category shown on the home page (e.g. "Images")."""
        raise NotImplementedError

    @staticmethod
    def get_id() -> str:
        """Return the extension's unique id (e.g. "image-classification")."""
        raise NotImplementedError

    @staticmethod
    def get_title() -> str:
        """Return the title shown on the home page (e.g. "Classification")."""
        raise NotImplementedError

    @staticmethod
    def get_default_visibility() -> bool:
        """Return whether the extension is shown in the web UI by default."""
        return True

    @staticmethod
    def get_dataset_form() -> Any:
        """Return a Flask-WTF form with every field needed to create the dataset."""
        raise NotImplementedError

    @staticmethod
    def get_dataset_template(form: Any) -> tuple[str, dict[str, Any]]:
        """Return ``(jinja_template_source, context)`` to render the dataset form.

        ``form`` is the form from get_dataset_form(), filled in when the job is a clone.
        """
        raise NotImplementedError

    @staticmethod
    def get_inference_form() -> Any:
        """Return a Flask-WTF form for creating an inference database, or None."""
        raise NotImplementedError

    @staticmethod
    def get_inference_template(form: Any) -> tuple[str, dict[str, Any]]:
        """Return ``(jinja_template_source, context)`` to render the inference form."""
        raise NotImplementedError

    def get_user_data(self) -> dict[str, Any]:
        """Return the serializable user data persisted with the dataset job."""
        return self.userdata
