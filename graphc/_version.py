"""The version of graphc (one place: pyproject.toml reads it, the package re-exports it)."""

__version__ = "0.1.0"
