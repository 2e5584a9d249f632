"""docs/models.md's architecture table lists every architecture the registry runs
natively or by name, and names nothing that cenote does not know."""

from __future__ import annotations

import re
from pathlib import Path

import transformers

from cenote.compat.vllm import ARCHITECTURE_LAYOUTS
from cenote.config.hf import DUAL_ENCODER_ARCHITECTURES
from cenote.models.registry import NATIVE_ARCHITECTURES, NATIVE_MODEL_TYPES

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _first_column_names() -> set[str]:
    text = DOC.read_text()
    table = text.split("<!-- models-table:start -->")[1].split("<!-- models-table:end -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return {name for row in rows[1:] for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def test_every_registered_architecture_has_a_row():
    listed = _first_column_names()
    registered = (set(NATIVE_MODEL_TYPES) | set(NATIVE_ARCHITECTURES) | set(ARCHITECTURE_LAYOUTS)
                  | set(DUAL_ENCODER_ARCHITECTURES))
    assert registered - listed == set(), "add a row to docs/models.md's architecture table"


def test_every_row_names_an_architecture_cenote_knows():
    known = (set(NATIVE_MODEL_TYPES) | set(NATIVE_ARCHITECTURES) | set(ARCHITECTURE_LAYOUTS)
             | set(DUAL_ENCODER_ARCHITECTURES))
    for name in _first_column_names():
        # Families' classes (ModernBertModel, ...) and patterns (*ForSequenceClassification)
        # are transformers' names.
        assert (name in known or hasattr(transformers, name) or name.startswith("*")
                or name in ("StaticEmbedding", "trust_remote_code")), name
