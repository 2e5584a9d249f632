"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) on packed tokens.

The matmuls see ``[num_tokens, hidden]`` with no padding; only attention lays
sequences out apart. Query/key/value are fused into one projection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from cenote.config.hf import position_offset
from cenote.config.token_classification import is_token_classifier
from cenote.models.batch import PackedBatch
from cenote.models.interface import AttentionShape, PoolingModel
from cenote.models.layers import LayerNorm, packed_qkv_attention, pooled_query_attention
from cenote.models.linear import ACTIVATION_FUNCTIONS, Linear, hidden_activation, split_rows
from cenote.models.loading import ParameterLoader, missing_tensors_error


class BertEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings,
                                                config.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(config.type_vocab_size, 1),
                                                  config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_offset = position_offset(config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word_embeddings(batch.input_ids)
        x = x + self.position_embeddings(batch.positions + self.position_offset)
        if batch.token_type_ids is not None:
            x = x + self.token_type_embeddings(batch.token_type_ids)
        else:
            x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertLayer(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = Linear(hidden, 3 * hidden)
        self.qkv.feeds_attention = True
        self.attn_out = Linear(hidden, hidden)
        self.attn_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn_in = Linear(hidden, config.intermediate_size)
        self.ffn_out = Linear(config.intermediate_size, hidden)
        self.ffn_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.act = hidden_activation(config)
        # The query and key/value projections apart (see split_qkv), last layer only.
        self.q_only: Linear | None = None
        self.kv_only: Linear | None = None

    def split_qkv(self) -> None:
        """Also keep the query and the key/value rows of ``qkv`` as projections of their
        own, for pooled-only passes (queries for the pooled rows alone). Before packing."""
        self.q_only, self.kv_only = split_rows(self.qkv, self.attn_out.in_features)

    def forward(self, x: torch.Tensor, batch: PackedBatch,
                pooled_only: bool = False) -> torch.Tensor:
        """``pooled_only``: every row serves as key and value, but only the rows of
        ``batch.pooled_rows`` are computed past attention (and returned)."""
        attn = None
        if pooled_only and self.q_only is not None:
            attn = pooled_query_attention(self.q_only, self.kv_only, x, batch,
                                          self.num_heads, self.num_heads, causal=False)
        if attn is None:
            attn = packed_qkv_attention(self.qkv(x), batch, self.num_heads, self.num_heads,
                                        causal=False, pooled_only=pooled_only)
        if pooled_only:
            x = x[batch.pooled_rows]
        x = self.attn_norm(self.attn_out.add(attn, x))
        return self.ffn_norm(self.ffn_in.feed_forward(x, self.act, self.ffn_out, x))


class BertClassifierHead(nn.Module):
    """BERT's pooler (dense + tanh) followed by the classifier."""

    def __init__(self, config) -> None:
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(x)))


class RobertaClassifierHead(nn.Module):
    """RoBERTa's classification head: dense + tanh + out_proj."""

    def __init__(self, config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


class MaskedLMHead(nn.Module):
    """BERT's (``cls.predictions``) or RoBERTa's (``lm_head``) masked-LM head: dense,
    activation, LayerNorm, then the vocabulary projection (a copy of the word
    embeddings where the checkpoint ties them). SPLADE reads its logits."""

    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(hidden, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.act = hidden_activation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(ACTIVATION_FUNCTIONS[self.act](self.dense(x)))
        return self.decoder(x) + self.bias


# Masked-LM head names (BERT's, RoBERTa's) -> ours.
_MLM_RENAMES = [
    (r"^cls\.predictions\.transform\.dense\.", "vocab_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "vocab_head.norm."),
    (r"^cls\.predictions\.decoder\.weight$", "vocab_head.decoder.weight"),
    (r"^cls\.predictions\.(decoder\.)?bias$", "vocab_head.bias"),
    (r"^lm_head\.dense\.", "vocab_head.dense."),
    (r"^lm_head\.layer_norm\.", "vocab_head.norm."),
    (r"^lm_head\.decoder\.weight$", "vocab_head.decoder.weight"),
    (r"^lm_head\.(decoder\.)?bias$", "vocab_head.bias"),
]

# Checkpoint name -> our name. Applied after the model prefix (bert., roberta., ...) is cut.
_LAYER_RENAMES = [
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)")
_IGNORED = re.compile(r"(^|\.)position_ids$|^(cls|lm_head)\.")
_PREFIXES = ("bert.", "roberta.", "xlm_roberta.", "model.")


class BertFamilyModel(PoolingModel):
    """An encoder of the BERT family; ``classifier`` is set for sequence classifiers.

    With ``batch.pooled`` set, the last layer runs for the pooled rows only and the
    output has the rows of ``batch.pooled_rows``.
    """

    computes_pooled_rows_only = True
    builds_vocab_head = True
    lora_modules = (
        (r"encoder\.layer\.(\d+)\.attention\.self\.(?P<part>query|key|value)", r"layers.\1.qkv",
         ("query", "key", "value")),
        (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"layers.\1.attn_out", None),
        (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"layers.\1.ffn_in", None),
        (r"encoder\.layer\.(\d+)\.output\.dense", r"layers.\1.ffn_out", None),
    )

    def __init__(self, config, task: str) -> None:
        super().__init__()
        positions = getattr(config, "position_embedding_type", None) or "absolute"
        if positions != "absolute":  # relative_key(_query): distances inside attention
            raise ValueError(f"position_embedding_type {positions!r} is not supported; "
                             "BERT-family models run with absolute positions only.")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        heads = config.num_attention_heads
        self.attention_shape = AttentionShape(heads, heads, config.hidden_size // heads, False)
        if task == "classify":
            if config.model_type == "bert":
                self.classifier = BertClassifierHead(config)
            else:
                self.classifier = RobertaClassifierHead(config)
        elif task == "reward" and is_token_classifier(
                (getattr(config, "architectures", None) or [""])[0]):
            # *ForTokenClassification: its classifier on every token (token_classify).
            self.token_head = nn.Linear(config.hidden_size, config.num_labels)

    def use_vocab_head(self) -> None:
        """Load the checkpoint's masked-LM head too (SPLADE reads its logits)."""
        self.vocab_head = MaskedLMHead(self.config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.embeddings(batch)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, pooled_only=i == last and batch.pooled is not None)
        return x

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in, fusing q/k/v; every parameter must be set."""
        loader = ParameterLoader(self, self.config.model_type)
        for raw_name, tensor in weights:
            name = raw_name.replace(".gamma", ".weight").replace(".beta", ".bias")
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            if self.token_head is not None and name.startswith("classifier."):
                loader.assign("token_head." + name.removeprefix("classifier."), tensor)
                continue
            if name.startswith("classifier.") or name.startswith("pooler."):
                # Only BERT's classifier uses its pooler; an embedder uses neither.
                if self.classifier is None or (
                    name.startswith("pooler.") and self.config.model_type != "bert"
                ):
                    continue
                if self.config.model_type == "bert":
                    name = "classifier." + name.replace("pooler.dense.", "pooler.")
                loader.assign(name, tensor)
                continue
            if self.vocab_head is not None and name.startswith(("cls.", "lm_head.")):
                for pattern, replacement in _MLM_RENAMES:
                    if re.search(pattern, name):
                        loader.assign(re.sub(pattern, replacement, name), tensor)
                        break
                continue
            if _IGNORED.search(name):
                continue
            match = _QKV.fullmatch(name)
            if match:
                layer, part, kind = match.groups()
                loader.add_part(f"layers.{layer}.qkv.{kind}", part, ("query", "key", "value"),
                                tensor)
                continue
            for pattern, replacement in _LAYER_RENAMES:
                name = re.sub(pattern, replacement, name)
            loader.assign(name, tensor)
        missing = loader.finish()
        if "vocab_head.decoder.weight" in missing:  # tied to the word embeddings
            with torch.no_grad():
                self.vocab_head.decoder.weight.copy_(self.embeddings.word_embeddings.weight)
            missing.remove("vocab_head.decoder.weight")
        if missing:
            raise missing_tensors_error(missing)
        self.layers[-1].split_qkv()  # the layer that runs pooled-only
