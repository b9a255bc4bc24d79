"""The gateway: Flask + htmx pages, DIGITS's JSON API, the S3 notification webhook."""

from gateway.app import create_app

__all__ = ["create_app"]
