"""Which checkpoints serve token_classify from a head of their own, as vLLM 0.34 does:
``*ForTokenClassification`` (a classifier on every token: NER and the like) and the BERT
family's raw ``*ForMaskedLM`` folders (the masked-LM head, a distribution over the
vocabulary per token). Both answer softmax probabilities by default, as vLLM does."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cenote.config.model import ModelConfig

TOKEN_CLASSIFIER_SUFFIX = "ForTokenClassification"
REWARD_SUFFIXES = ("ForRewardModel", "ForProcessRewardModel")
# Masked-LM checkpoints whose head cenote runs natively (BERT family); vLLM serves
# BertForMaskedLM's head as token_classify.
MASKED_LM_ARCHITECTURES = frozenset({"BertForMaskedLM", "RobertaForMaskedLM",
                                     "XLMRobertaForMaskedLM"})


def is_token_classifier(architecture: str) -> bool:
    """A ``*ForTokenClassification`` checkpoint: served as a per-token model (task
    reward, pooling task token_classify), its classifier applied to every token."""
    return architecture.endswith(TOKEN_CLASSIFIER_SUFFIX)


def serves_masked_lm_head(config: ModelConfig) -> bool:
    """A raw BERT-family masked-LM folder embedding with its body (cenote's) whose
    token_classify is its masked-LM head (vLLM's). Not a Sentence-Transformers folder
    (which saves the body only), a SPLADE model (whose head makes sparse vectors) nor a
    folder whose weights have no masked-LM head (a body saved under the MLM's name)."""
    return (config.task == "embed" and config.architecture in MASKED_LM_ARCHITECTURES
            and config.st_config is None and config.retrieval.sparse is None
            and has_masked_lm_weights(str(config.path)))


@functools.lru_cache(maxsize=64)
def has_masked_lm_weights(folder: str) -> bool:
    """Whether the checkpoint in ``folder`` holds a BERT (``cls.predictions.``) or
    RoBERTa (``lm_head.``) masked-LM head; only the tensor names are read."""
    names: list[str] = []
    for file in sorted(Path(folder).glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            names.extend(handle.keys())
    if not names:
        for file in sorted(Path(folder).glob("pytorch_model*.bin")):
            names.extend(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
    return any(n.startswith(("cls.predictions.", "lm_head.")) for n in names)


def has_token_classify_head(config: ModelConfig) -> bool:
    """Whether the model has a per-token head for token_classify: a reward model's, a
    token classifier's, a raw masked-LM folder's."""
    return serves_masked_lm_head(config) or config.task == "reward" and (
        config.architecture.endswith(REWARD_SUFFIXES)
        or is_token_classifier(config.architecture))


def softmax_by_default(config: ModelConfig) -> bool:
    """Whether token_classify applies softmax unless asked not to (vLLM's classifier
    activation on these heads; a reward head's outputs stay raw)."""
    return is_token_classifier(config.architecture) or serves_masked_lm_head(config)


def check_token_classifier_head(config: ModelConfig, has_head: bool) -> None:
    """A token classifier whose native model built no per-token head (a family cenote
    runs natively without its token-classification head) is refused, never answered
    with its hidden states."""
    if config.task == "reward" and is_token_classifier(config.architecture) and not has_head:
        raise ValueError(f"{config.architecture} is not supported: cenote runs this "
                         "family natively without its token-classification head.")
