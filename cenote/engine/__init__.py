"""Tokenising, scheduling and running batches; the async engine for the server."""
