"""The package version, in one place (``landprobe.__version__`` re-exports it)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
