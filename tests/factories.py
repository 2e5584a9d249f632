"""Small test models built from the real MiniLM body or from random configs.

Each builder saves a folder exactly as users have one (``save_pretrained`` for
the model and its tokenizer) and returns its path.
"""

from __future__ import annotations

import json
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


# Tiny random models. They reuse MiniLM's tokenizer (vocab 30522), so any text works.
TINY_VOCAB = 30522
TINY_BERT_FAMILY = {
    "bert": ("BertConfig", "BertForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification"),
}
TINY_DECODER_CONFIGS = {
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
}
# Architecture prefix of each decoder family, e.g. "Qwen2" -> Qwen2Model.
DECODER_PREFIXES = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama", "mistral": "Mistral"}


def _widen_(model: torch.nn.Module, std: float) -> None:
    """Re-draw every weight matrix with a larger spread: random tiny models at the
    default 0.02 give near-constant outputs, where a wrong op can hide."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 or name.endswith("bias"):
                param.normal_(0, std)
            else:  # norm scales: around 1, but not exactly, so a dropped scale shows
                param.normal_(1, std)


def build_tiny_bert_classifier(
    minilm_path: Path, target: Path, model_type: str, num_labels: int, seed: int = 0
) -> Path:
    """A random 2-layer BERT/RoBERTa/XLM-R ``*ForSequenceClassification``."""
    import transformers

    config_name, model_name = TINY_BERT_FAMILY[model_type]
    torch.manual_seed(seed)
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    extra = {"pad_token_id": 1} if model_type != "bert" else {}
    config = getattr(transformers, config_name)(
        vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=160, type_vocab_size=2,
        num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        **extra,
    )
    model = getattr(transformers, model_name)(config)
    _widen_(model, 0.1)
    model.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def tiny_decoder_config(model_type: str, **overrides):
    """A 2-layer decoder config: hidden 64, 4 query heads sharing 2 key/value heads."""
    import transformers

    values = dict(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=256, rms_norm_eps=1e-6,
    )
    if model_type == "mistral":
        values["sliding_window"] = 12  # shorter than the test texts, so the window shows
    values.update(overrides)
    return getattr(transformers, TINY_DECODER_CONFIGS[model_type])(**values)


def build_tiny_decoder(
    minilm_path: Path, target: Path, model_type: str, architecture: str, seed: int = 0,
    **config_overrides,
) -> Path:
    """A random Qwen2/Qwen3/Llama/Mistral checkpoint saved as ``architecture``.

    ``architecture`` is a transformers class name such as ``Qwen2Model``,
    ``LlamaForCausalLM`` or ``MistralForSequenceClassification``.
    """
    import transformers

    torch.manual_seed(seed)
    config = tiny_decoder_config(model_type, **config_overrides)
    model = getattr(transformers, architecture)(config)
    _widen_(model, 0.1)
    model.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def add_tensors_to_checkpoint(folder: Path, tensors: dict[str, torch.Tensor],
                              **config_updates) -> None:
    """Add tensors to a folder's ``model.safetensors`` and update its ``config.json``."""

    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    state = load_file(str(file))
    state.update({name: t.contiguous() for name, t in tensors.items()})
    save_file(state, str(file), metadata={"format": "pt"})
    if config_updates:
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text())
        config.update(config_updates)
        config_file.write_text(json.dumps(config, indent=2))


def build_tiny_qwen2_reward_model(
    minilm_path: Path, target: Path, num_labels: int = 1, seed: int = 0,
    architecture: str = "Qwen2ForRewardModel", labels_in_config: bool = True,
) -> Path:
    """A Qwen2ForRewardModel (or Qwen2ForProcessRewardModel) checkpoint (remote code
    upstream, so built by hand).

    The body is a random Qwen2Model saved under ``model.``; the per-token head is
    ``score.0`` (Linear hidden->hidden) -> ReLU -> ``score.2`` (Linear hidden->num_labels).
    ``labels_in_config=False``: config.json names no labels, as upstream's (its code
    hard-codes the head's size).
    """
    from safetensors.torch import load_file, save_file

    build_tiny_decoder(minilm_path, target, "qwen2", "Qwen2Model", seed=seed)
    file = target / "model.safetensors"
    state = {"model." + name: t for name, t in load_file(str(file)).items()}
    save_file(state, str(file), metadata={"format": "pt"})
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = 64
    head = {
        "score.0.weight": torch.randn(hidden, hidden, generator=generator) * 0.2,
        "score.0.bias": torch.randn(hidden, generator=generator) * 0.2,
        "score.2.weight": torch.randn(num_labels, hidden, generator=generator) * 0.2,
        "score.2.bias": torch.randn(num_labels, generator=generator) * 0.2,
    }
    add_tensors_to_checkpoint(target, head, architectures=[architecture],
                              **({"num_labels": num_labels} if labels_in_config else {}))
    if not labels_in_config:
        config = json.loads((target / "config.json").read_text())
        for key in ("num_labels", "id2label", "label2id"):
            config.pop(key, None)
        (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def build_tiny_distilbert(minilm_path: Path, target: Path, num_labels: int | None = None,
                          seed: int = 0) -> Path:
    """A random DistilBERT (no native implementation: runs through the fallback).

    With ``num_labels`` it is a ``DistilBertForSequenceClassification``, else a
    ``DistilBertModel``.
    """
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertModel,
    )

    torch.manual_seed(seed)
    kwargs = {"num_labels": num_labels} if num_labels else {}
    config = DistilBertConfig(vocab_size=TINY_VOCAB, dim=64, n_layers=2, n_heads=4,
                              hidden_dim=128, max_position_embeddings=160, **kwargs)
    model = (DistilBertForSequenceClassification if num_labels else DistilBertModel)(config)
    _widen_(model, 0.1)
    model.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def build_tiny_transformers_model(minilm_path: Path, target: Path, config_class: str,
                                  model_class: str, seed: int = 0, **config: object) -> Path:
    """A random model of any transformers class (``config_class``/``model_class`` are
    names in ``transformers``), with the MiniLM tokenizer: fallback architectures."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(
        getattr(transformers, config_class)(vocab_size=TINY_VOCAB, **config))
    _widen_(model, 0.1)
    model.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def build_minilm_with_prompts(minilm_path: Path, target: Path, prompts: dict[str, str],
                              default_prompt_name: str | None = None,
                              include_prompt: bool = True) -> Path:
    """The real MiniLM Sentence-Transformers folder with instructions in
    ``config_sentence_transformers.json`` (and Pooling's ``include_prompt``), as
    Sentence-Transformers saves an e5/bge-style model."""
    import shutil

    shutil.copytree(minilm_path, target, dirs_exist_ok=True)
    config_file = target / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts=prompts, default_prompt_name=default_prompt_name)
    config_file.write_text(json.dumps(config, indent=2))
    pooling_file = target / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text())
    pooling["include_prompt"] = include_prompt
    pooling_file.write_text(json.dumps(pooling, indent=2))
    return target


def build_bge_m3_standin(minilm_path: Path, target: Path, seed: int = 0) -> Path:
    """A BGE-M3-shaped folder: an encoder with no Sentence-Transformers modules (CLS
    pooling, normalised) and FlagEmbedding's two heads beside it, ``colbert_linear.pt``
    (hidden -> hidden) and ``sparse_linear.pt`` (hidden -> 1), seeded."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if (minilm_path / name).is_file():
            shutil.copy(minilm_path / name, target / name)
    hidden = json.loads((minilm_path / "config.json").read_text())["hidden_size"]
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), target / "colbert_linear.pt")
    sparse = torch.nn.Linear(hidden, 1)
    with torch.no_grad():  # a spread of positive and negative weights, as a trained head
        sparse.weight.normal_(0, 0.2)
    torch.save(sparse.state_dict(), target / "sparse_linear.pt")
    return target


def build_splade(minilm_path: Path, target: Path, max_active_dims: int | None = None,
                 seed: int = 0) -> Path:
    """A SPLADE SparseEncoder saved by Sentence-Transformers: the MiniLM body as a
    BertForMaskedLM (its head seeded, the decoder tied to the word embeddings) with
    SpladePooling (max, relu)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    mlm_folder = target / "mlm"
    BertForMaskedLM.from_pretrained(minilm_path).save_pretrained(mlm_folder)
    _save_tokenizer(minilm_path, mlm_folder)
    body = Transformer(str(mlm_folder), transformer_task="fill-mask", max_seq_length=256)
    model = SparseEncoder(modules=[body, SpladePooling(pooling_strategy="max",
                                                       activation_function="relu")],
                          device="cpu", max_active_dims=max_active_dims)
    folder = target / "splade"
    model.save(str(folder))
    return folder


def build_colbert(minilm_path: Path, target: Path, seed: int = 0) -> Path:
    """A ColBERT MultiVectorEncoder saved by Sentence-Transformers: the MiniLM body,
    [unused0]/[unused1] query/document markers, [MASK] query expansion to 32 tokens
    (not attended), documents cut at 180, a seeded Dense 384 -> 128 without bias,
    punctuation left out of documents, normalised vectors."""
    colbert_encoder(minilm_path, 384, 128, seed).save(str(target))
    return target


def colbert_encoder(body_path: Path, hidden: int, dim: int, seed: int):
    """``build_colbert``'s MultiVectorEncoder (not saved) over the transformers body at
    ``body_path`` (``hidden`` wide), its seeded Dense projecting to ``dim``."""
    import string

    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from transformers import AddedToken

    body = Transformer(str(body_path), document_length=180,
                       query_expansion={"strategy": "fixed", "attend": False, "length": 32})
    body.tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken("[unused0]", normalized=False, special=True),
        AddedToken("[unused1]", normalized=False, special=True)]})
    torch.manual_seed(seed)
    dense = Dense(hidden, dim, bias=False, activation_function=torch.nn.Identity(),
                  module_input_name="token_embeddings")
    return MultiVectorEncoder(
        modules=[body, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                 Normalize(module_input_name="token_embeddings")],
        prompts={"query": "[unused0] ", "document": "[unused1] "}, device="cpu")


def build_tiny_dual_encoder(minilm_path: Path, target: Path, family: str = "clip",
                            seed: int = 0) -> Path:
    """A random CLIP or SigLIP (2 layers a tower, 32x32 images in 8x8 patches), saved with
    ``save_pretrained`` beside MiniLM's tokenizer and the family's PIL image processor
    (not square-resized: CLIP resizes the short side and centre-crops)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
    )

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4)
    torch.manual_seed(seed)
    if family == "clip":
        config = CLIPConfig(
            text_config=dict(vocab_size=TINY_VOCAB, max_position_embeddings=64, eos_token_id=102,
                             bos_token_id=101, pad_token_id=0, **tower),
            vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
        model = CLIPModel(config)
        processor = CLIPImageProcessorPil(size={"shortest_edge": 32},
                                          crop_size={"height": 32, "width": 32})
    else:
        config = SiglipConfig(
            text_config=dict(vocab_size=TINY_VOCAB, max_position_embeddings=64, pad_token_id=0,
                             **tower),
            vision_config=dict(image_size=32, patch_size=8, **tower))
        model = SiglipModel(config)
        processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    model.save_pretrained(target)
    processor.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target


def build_st_clip_folder(clip_path: Path, target: Path) -> Path:
    """A Sentence-Transformers CLIP folder as ``clip-ViT-B-32`` ships: the model in
    ``0_CLIPModel`` and a ``modules.json`` naming it."""
    import shutil

    shutil.copytree(clip_path, target / "0_CLIPModel")
    (target / "modules.json").write_text(json.dumps([{
        "idx": 0, "name": "0", "path": "0_CLIPModel",
        "type": "sentence_transformers.models.CLIPModel"}]))
    return target


def build_stanford_colbert(minilm_path: Path, target: Path, dim: int = 96,
                           seed: int = 0) -> Path:
    """A Stanford ColBERT folder as the colbert library saves one (answerai-colbert-
    small-v1's layout): architecture ``HF_ColBERT``, the MiniLM encoder's weights under
    ``bert.`` and the projection as a top-level ``linear.weight`` ([dim, hidden], no
    bias, seeded) in the same ``model.safetensors``, beside MiniLM's tokenizer."""
    from safetensors.torch import save_file
    from transformers import BertModel

    body = BertModel.from_pretrained(minilm_path)
    generator = torch.Generator().manual_seed(seed)
    state = {"bert." + name: t.contiguous() for name, t in body.state_dict().items()}
    state["linear.weight"] = torch.randn(dim, body.config.hidden_size,
                                         generator=generator) * 0.05
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    body.config.architectures = ["HF_ColBERT"]
    body.config.save_pretrained(target)
    _save_tokenizer(minilm_path, target)
    return target
