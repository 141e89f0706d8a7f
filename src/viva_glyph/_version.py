"""The library's version: one source for the package, model files and pyproject (hatch)."""

__version__ = "0.1.0"
