"""DIGITS extensions: data ingestion (``digits.extensions.data``) and views, with DIGITS's paths."""
