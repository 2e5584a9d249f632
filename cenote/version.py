"""The version of cenote."""

__version__ = "0.1.0"
