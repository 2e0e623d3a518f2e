"""The library's version: a leaf module, so that any layer can record it in artefacts."""

__version__ = "0.1.0"
