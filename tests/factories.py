"""Small test models built from the real MiniLM body or from random configs.

Each builder saves a folder exactly as users have one (``save_pretrained`` for
the model and its tokenizer) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _save_tokenizer(source: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def build_minilm_classifier(
    minilm_path: Path, target: Path, num_labels: int, seed: int = 0,
    sentence_transformers_activation: str | None = None,
) -> Path:
    """The MiniLM body with a fresh, seeded BertForSequenceClassification head."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    id2label = {i: f"LABEL_{chr(ord('A') + i)}" for i in range(num_labels)}
    model = BertForSequenceClassification.from_pretrained(
        minilm_path, num_labels=num_labels, id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    # A fresh head is near zero; widen it so scores spread and mistakes show.
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.normal_(0, 0.5)
    if sentence_transformers_activation is not None:
        model.config.sentence_transformers = {"activation_fn": sentence_transformers_activation}
    model.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def build_cross_encoder(minilm_path: Path, target: Path) -> Path:
    """A Sentence-Transformers style CrossEncoder: one label, sigmoid activation."""
    return build_minilm_classifier(
        minilm_path, target, num_labels=1, seed=1,
        sentence_transformers_activation="torch.nn.modules.activation.Sigmoid",
    )
