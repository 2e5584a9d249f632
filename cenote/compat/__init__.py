"""Compatibility with other engines' APIs: their aliases, ignored options and refusals."""
