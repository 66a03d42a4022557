"""The ``s3`` storage driver: see ``driver`` (the interface) and ``writer`` (multipart uploads)."""

from .driver import S3Driver

__all__ = ["S3Driver"]
