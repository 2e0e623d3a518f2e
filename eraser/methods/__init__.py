"""Registered methods. Importing this package registers them all."""

from . import unlink  # noqa: F401
