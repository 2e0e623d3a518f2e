"""Registered methods. Importing this package registers them all."""

from . import ascent, finetune, relabel, unlink  # noqa: F401
