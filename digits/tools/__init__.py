"""Command-line tools that come with DIGITS, such as ``upload_s3_data``."""
