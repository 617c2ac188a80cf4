"""The studio's version (one place: the package, the report and the batch state read it)."""

__version__ = "0.1.0"
