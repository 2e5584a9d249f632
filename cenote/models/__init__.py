"""Model implementations: native packed-token families and the transformers fallback."""

from cenote.models.registry import load_model

__all__ = ["load_model"]
